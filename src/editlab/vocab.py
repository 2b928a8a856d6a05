"""The evaluation vocabulary: probe kinds, prompt rendering, hit rules and the target per stage.

One module owns the words every layer uses to talk about a scored edit (evaluation.md, world.md
section 6), so that the world's case builder, the gold standard, the scoring core, the metrics, the
editing protocols, the summary, the report and the plots cannot drift apart:

- **probe kinds**: the atomic probes ``s1r1 s1r2 s2r1 s2r2`` (Hase et al. Table 4's columns), the
  logical sentences about A (a fact of s1) and B (a fact of another subject), and ``atomic_A`` (the
  atomic read-out of A, the TF metric's operand);
- **prompt rendering**: the text ``"s r"`` of a fact's prompt, the corpus sentence ``"s r o"``, the
  TF sentence ``'"s r o" is'`` with its labels `` true`` / `` false``, an in-context prefix before a
  prompt, and the token ids the scorer feeds (BOS + tokens(prompt), object tokenised apart with its
  leading space), including the subject's token span inside them (what locate-then-edit methods
  need: ROME/MEMIT read the key at the subject's last token); :class:`PromptEncoder` caches those ids
  per string for everything that scores or edits;
- **hit rules** of generative accuracy: ``paper`` (substring) and ``exact``;
- **the target per stage**: which object each atomic probe is scored against before the edit, right
  after it and on the final model of a sequential stream.

It imports no other editlab package (only :mod:`editlab.errors`), so ``world/``, ``metrics/``, ``eval/``
and ``editing/`` all import it without creating a cycle between them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from transformers import PreTrainedTokenizerBase

from editlab.errors import EditlabError

# ---------------------------------------------------------------------------------------------- probe kinds
ATOMIC: tuple[str, ...] = ("s1r1", "s1r2", "s2r1", "s2r2")
"""Atomic probe kinds: same/different subject x same/different relation as the edit (Table 4 columns)."""
LOGICAL: tuple[str, ...] = ("tf_A", "not_A", "and_AB", "and_BA", "or_BA", "tf_B")
"""Logical sentences scored by p(" true" | '"<sentence>" is'), in the order the case builder writes them."""
ATOMIC_A = "atomic_A"
"""p_LM(o_A | s1 r1): the atomic read-out of the TF sentence's fact A."""
AGENT_KINDS: tuple[str, ...] = (*LOGICAL, ATOMIC_A)
"""Probes scored against the agent beyond the paper (logical coherence against the agent)."""
LOGIC_OPERANDS: tuple[str, ...] = (ATOMIC_A, "tf_A", "not_A", "and_AB", "and_BA", "or_BA", "tf_B")
"""The operands of the LM's logical coherence against itself, in the argument order of ``logical_gaps``."""

# ------------------------------------------------------------------------------------------ stages, subsets
STAGES: tuple[str, ...] = ("pre", "post", "final")
"""pre-edit model; right after the edit (sequential: the immediate score); the final model of a stream."""
SUBSETS: tuple[str, ...] = ("all", "downstream_changes", "fixing_errors", "updating")
"""The row blocks of Tables 4/5 (evaluation.md, "Paper metrics")."""

# targets of an atomic probe (the ``target`` field of a probe record, world.md section 6)
ORIGINAL, REQUESTED, NEW_ARGMAX = "original", "requested", "new_argmax"


def target(stage: str, kind: str) -> str:
    """The probe target an atomic ``kind`` is scored against at ``stage``.

    Before the edit every probe should produce its original modal object; after it (and on the final
    model) s1 r1 should produce o* and the other probes the agent's new argmax (evaluation.md).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")
    if kind not in ATOMIC:
        raise ValueError(f"{kind!r} is not an atomic probe kind {ATOMIC}")
    if stage == "pre":
        return ORIGINAL
    return REQUESTED if kind == "s1r1" else NEW_ARGMAX


def targets(stage: str) -> dict[str, str]:
    """:func:`target` of every atomic kind at ``stage``."""
    return {k: target(stage, k) for k in ATOMIC}


def is_target_probe(probe: dict, stage: str) -> bool:
    """Whether ``probe`` (a case's probe record) is the one its atomic kind is scored on at ``stage``."""
    return probe["kind"] in ATOMIC and probe["target"] == target(stage, probe["kind"])


def target_index(case: dict, kind: str, stage: str) -> int | None:
    """Position in ``case["probes"]`` of the ``kind`` probe scored at ``stage`` (None if the case lacks it).

    Logical kinds have one probe each and no target: their first probe of that kind.
    """
    for i, pr in enumerate(case["probes"]):
        if pr["kind"] == kind and (kind not in ATOMIC or pr["target"] == target(stage, kind)):
            return i
    return None


def stage_gold(stage: str, record: dict, probes: list[dict]) -> list[float]:
    """The gold probability per probe (in probe order) at ``stage`` for a result record.

    Before the edit the fitted agent's ``p_pre``; after it the agent holding the same edits as the
    model (the record's ``gold_agent``): ``gold_post`` right after the edit (a batch: the agent holding the
    whole batch; a sequential stream: every edit so far) and ``gold_final`` on a stream's final model;
    a single edit's record carries neither and takes the case's single-edit ``p_post``.
    """
    if stage == "pre":
        return [p["p_pre"] for p in probes]
    if stage == "final" and "gold_final" in record:
        return record["gold_final"]
    return record.get("gold_post") or [p["p_post"] for p in probes]


def stage_target(stage: str, record: dict, probe: dict) -> str:
    """The object an atomic target probe's greedy continuation must produce at ``stage``.

    The probe's own object (its ``target`` of :func:`target`), unless the record names the answer of the
    agent holding the same edits (``target_post`` / ``target_final``, one object per atomic kind): after a
    batch or in a stream that agent's argmax, or the requested object where the probe asks another request.
    """
    if stage == "pre":
        return probe["object"]
    return record.get(f"target_{stage}", {}).get(probe["kind"], probe["object"])


GOLD_AGENTS: tuple[str, ...] = ("single", "batch", "stream")
"""Which agent a record is scored against (its ``gold_agent``): the fitted agent plus the case's own edit, plus
the whole batch, or plus every edit of the sequential stream so far."""


def gold_agent(record: dict) -> str:
    """A record's ``gold_agent``; records written before the field existed: ``stream`` if sequential, else
    ``single`` (their batch golds were the single-edit ones)."""
    return record.get("gold_agent") or ("stream" if record.get("mode") == "sequential" else "single")


def has_object(probe: dict) -> bool:
    """Atomic probes (and ``atomic_A``) score an object; logical sentences score the labels."""
    return "object" in probe


# ------------------------------------------------------------------------------------------------- prompts
TRUE, FALSE = "true", "false"
"""Labels of the logical sentences (scored as objects, i.e. `` true`` / `` false`` with the leading space)."""


def prompt(subject: str, relation: str) -> str:
    """The prompt of a fact, ``"s r"`` (the corpus writes facts as "s r o.")."""
    return f"{subject} {relation}"


def sentence(subject: str, relation: str, obj: str) -> str:
    """The fact as a corpus sentence without its period, ``"s r o"``."""
    return f"{prompt(subject, relation)} {obj}"


def tf_prompt(subject: str, relation: str, obj: str) -> str:
    """The TF sentence about a fact, ``'"s r o" is'`` (followed by `` true`` or `` false``)."""
    return f'"{sentence(subject, relation, obj)}" is'


def case_prompt(case: dict) -> str:
    """The edit request's prompt ``"s1 r1"`` of a case record."""
    return prompt(case["subject"], case["relation"])


def fact_prompt(fact: dict) -> str:
    """The prompt ``"s r"`` of a fact record (facts.jsonl)."""
    return prompt(fact["subject"], fact["relation"])


def request_tf_prompt(case: dict) -> str:
    """The edit itself as a TF sentence, ``'"s1 r1 o*" is'`` (portability: a logical consequence)."""
    return tf_prompt(case["subject"], case["relation"], case["requested_object"])


def with_prefix(prefix: str, text: str) -> str:
    """``text`` behind an in-context ``prefix`` (a preceding sentence of the same document)."""
    return f"{prefix} {text}" if prefix else text


LEAD = "editlab_lead"
"""The tokenizer attribute :func:`use_own_framing` sets: the special-token ids the tokenizer puts before a text."""


def lead_ids(tok: PreTrainedTokenizerBase) -> list[int]:
    """The ids every prompt starts with: ``[BOS]`` for the world's tokenizer (which adds none itself, so that
    documents are stored unframed), or what a model's own tokenizer adds (:func:`use_own_framing`)."""
    lead = getattr(tok, LEAD, None)
    return [tok.bos_token_id] if lead is None else list(lead)


def use_own_framing(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Frame prompts the way ``tok`` itself does (a Hugging Face model's own tokenizer, ``model=hf``): the special
    tokens it adds before a text (Llama and Mistral: BOS; GPT-2 and Qwen: none), as the reference code feeds them
    (ROME and EasyEdit call the tokenizer with its defaults). A tokenizer without a padding token pads with EOS
    (padding is always masked). Returns ``tok``, changed in place."""
    own = tok("a")["input_ids"]
    bare = tok("a", add_special_tokens=False)["input_ids"]
    if not bare or own[len(own) - len(bare):] != bare:
        raise EditlabError(f"the tokenizer {type(tok).__name__} adds special tokens after a text ({own} for {bare}); "
                           "editlab frames prompts with leading special tokens only")
    setattr(tok, LEAD, tuple(own[: len(own) - len(bare)]))
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise EditlabError(f"the tokenizer {type(tok).__name__} has neither a padding nor an EOS token; "
                               "give it a pad_token in its tokenizer_config.json")
        tok.pad_token = tok.eos_token
    return tok


def prompt_ids(tok: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """:func:`lead_ids` + tokens(text) per text: how every prompt is fed to the LM (BOS + tokens for the world)."""
    lead = lead_ids(tok)
    return [[*lead, *ids] for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]


def object_ids(tok: PreTrainedTokenizerBase, objects: Sequence[str]) -> list[list[int]]:
    """tokens(" " + object): the object with its leading space, tokenised apart from the prompt (the paper)."""
    return tok([" " + o for o in objects], add_special_tokens=False)["input_ids"]


class PromptEncoder:
    """Token ids of (prefix, prompt) and (" " + object), cached by string (prompts repeat a lot)."""

    def __init__(self, tok: PreTrainedTokenizerBase) -> None:
        self.tok = tok
        self._prompt: dict[tuple[str, str], list[int]] = {}
        self._object: dict[str, list[int]] = {}

    def prompts(self, items: Sequence[tuple[str, str]]) -> list[list[int]]:
        """:func:`~editlab.vocab.prompt_ids` of ``with_prefix(prefix, prompt)`` for (prefix, prompt) items."""
        new = sorted({x for x in items if x not in self._prompt})
        if new:
            texts = [with_prefix(pre, p) for pre, p in new]
            for key, ids in zip(new, prompt_ids(self.tok, texts), strict=True):
                self._prompt[key] = ids
        return [self._prompt[x] for x in items]

    def objects(self, items: Sequence[str]) -> list[list[int]]:
        """:func:`~editlab.vocab.object_ids`: the object with its leading space, tokenised apart from the prompt."""
        new = sorted({x for x in items if x not in self._object})
        if new:
            for key, ids in zip(new, object_ids(self.tok, new), strict=True):
                self._object[key] = ids
        return [self._object[x] for x in items]


def subject_span(tok: PreTrainedTokenizerBase, subject: str, relation: str, prefix: str = "", text: str = ""
                 ) -> tuple[list[int], tuple[int, int]]:
    """The ids :func:`prompt_ids` feeds for ``with_prefix(prefix, prompt)`` and the token span ``(start, end)`` (end
    exclusive, positions in those ids, after :func:`lead_ids`) covering the subject. The prompt is
    ``prompt(subject, relation)``, or ``text`` where given (a benchmark's prompt: the subject's first occurrence in it,
    as ROME's ``{}`` template marks it).

    The span is read from the fast tokenizer's character offsets, never by tokenising the subject on
    its own: a byte-level BPE tokenises a word differently at the start of the text and after a space
    (``"Kovil"`` vs ``" Kovil"``), so the subject's tokens depend on whether a prefix precedes it. A
    token that straddles the subject's boundary counts as part of the subject.
    """
    if not getattr(tok, "is_fast", False):
        raise EditlabError("subject spans need a fast tokenizer (character offsets); load the world's "
                           "tokenizer with PreTrainedTokenizerFast")
    body = text or prompt(subject, relation)
    at = body.find(subject) if subject else -1
    if at < 0:
        raise EditlabError(f"subject {subject!r} does not occur in its prompt {body!r}")
    full = with_prefix(prefix, body)
    a = len(full) - len(body) + at
    b = a + len(subject)
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < b and e > a and e > s]
    if not inside:
        raise EditlabError(f"subject {subject!r} has no token in {full!r}; is it empty?")
    lead = lead_ids(tok)
    k = len(lead)
    return [*lead, *enc["input_ids"]], (inside[0] + k, inside[-1] + k + 1)


# ------------------------------------------------------------------------------------------------ hit rules
def hit_paper(continuation: str, label: str) -> bool:
    """Paper protocol: the label is a substring of the continuation, lower-cased, periods removed."""
    return label.lower().replace(".", "") in continuation.lower().replace(".", "")


def answer_text(continuation: str) -> str:
    """The answer a continuation gives: its text up to the first '.', '"' or end, stripped."""
    cut = len(continuation)
    for ch in ('.', '"'):
        j = continuation.find(ch)
        if j >= 0:
            cut = min(cut, j)
    return continuation[:cut].strip()


def hit_exact(continuation: str, label: str) -> bool:
    """Exact protocol: the continuation's answer (:func:`answer_text`) equals the label."""
    return answer_text(continuation) == label


HITS: dict[str, Callable[[str, str], bool]] = {"paper": hit_paper, "exact": hit_exact}
"""Generative-accuracy protocols by name (``metrics.protocol``); edit success always uses ``exact``."""


def hit_rule(protocol: str) -> Callable[[str, str], bool]:
    """The hit function of ``protocol``, or one clear error naming the valid ones."""
    if protocol not in HITS:
        raise EditlabError(f"unknown generation protocol {protocol!r}; use one of {sorted(HITS)}")
    return HITS[protocol]
