"""Meta-training of SERAC (``python train.py task=editor method=serac``): the scope classifier and the
counterfactual model, on the world's meta split (subjects disjoint from every evaluation case).

Per meta-training example (editing/meta_data.py: an edit ``s r -> o*``) the queries are

- in scope: the example's equivalents, the request ``"s r"`` (answer ``o*``) and its TF sentence
  ``'"s r o*" is'`` (answer ``true``);
- out of scope: its locality facts (other subjects, with their modal objects), and hard negatives
  built from the batch: the same subject with another relation of the batch ``"s r'"`` and another
  subject of the batch with the same relation ``"s' r"`` (prompts without an answer);
- every query of the batch's other examples (in-batch negatives).

A benchmark's examples (``train.py task=editor data=<benchmark>``,
:func:`~editlab.editing.meta_data.benchmark_examples`) have no relation grid: their out-of-scope queries are their
locality questions and the in-batch negatives, as SERAC trains on zsRE (other questions and NQ questions).

A query is about the fact ``"s r"`` it asks; it is in the scope of every stored edit of that fact.

**Scope** (``method.hparams.scope``): the above is ``request``, the paper's SERAC. With ``agent`` the scope
of an edit is every query whose gold answer changes with it: when the example's case says the agent's
argmax for the downstream fact ``s r2`` changes (``MetaExample.downstream_changes``; r2 depends on r1 in
the world), ``"s r2"`` is in scope too, answered by the counterfactual model with the edit prepended, and
is not among the example's hard negatives; an unchanged downstream fact is a hard negative (its first
same-subject one). The information comes from the world's agent on the meta split's subjects only (the
cases' ``s1r2`` probes), never from an evaluation subject.

The downstream answer is **soft**: one query per object the case records for ``s r2`` (the original modal
object and the agent's new argmax), its NLL weighted by the agent's posterior after the edit, the
objective MEND/MALMEN's ``soft_downstream`` uses (editing/hyper/meta_loss.py). Chosen over the hard new
argmax because the agent's answer is a distribution, and the evaluation scores both the greedy answer and
the probabilities (coherence): at the optimum the counterfactual model splits the mass between the two
objects in the agent's proportions, so the greedy answer is still the new argmax (it has the larger
posterior) without being trained to certainty the agent does not have; and the original object's answer
tokens, which teacher-forced scoring reads, are trained in scope as well, so the classifier routes them to
the counterfactual model too.

**Classifier loss**: balanced binary cross-entropy over (query position, stored edit) pairs at the
positions whose predictions are read (the last prompt token and the answer's tokens, teacher forced):
positive where the query is about the edit's fact (same ``(subject, relation)``), negative otherwise;
the mean over positives and the mean over negatives weigh one half each. Earlier positions carry no
label (a prefix ``"s"`` is also a prefix of the hard negative ``"s r2"``).

**Counterfactual objects**: in each training step an example's object ``o*`` is swapped, with probability
``resample``, for another object the split names for its relation (``MetaExample.alternatives``; the
request's TF equivalent follows; under ``scope: agent`` an example with a changing downstream fact keeps its
object, because the agent's downstream answer is known for the case's own object only). A meta split holds a
few hundred edits; without the swap the counterfactual model learns their objects by heart (measured on the
tiny model: 0.99 greedy success on training edits, 0.76 on held-out ones) instead of reading the prefix. The
swap draws from a generator seeded by the run's seed and the step, so a resumed run draws what the
uninterrupted one did. Validation always uses the examples as they are.

**Counterfactual loss**: the NLL of each equivalent's answer (and, under ``scope: agent``, the weighted NLL
of the changing downstream answers, the sum divided by the total weight of the in-scope answers) given
``BOS "s r o*." BOS query`` (the wrapper's input format), plus ``c_loc`` times KL(base || counterfactual) at the
answer positions of the out-of-scope queries (answer positions, or the last prompt token of a bare prompt)
given the same edit prefix: a query the classifier misroutes still gets the base answer.

Validation runs the real :class:`~editlab.editing.methods.serac_model.SeracWrapper` with the whole
validation batch in memory: ``val/edit_success`` is the share of requests whose every answer token is
the argmax (teacher forced), ``val/locality`` the share of locality facts whose argmax answer tokens are
the base model's; under ``scope: agent`` also ``val/downstream_success``, the share of changing downstream
facts whose argmax answer tokens are the agent's new argmax object.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import lightning as L
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editlab.editing.loss import TargetBatch
from editlab.editing.meta_data import MetaExample, SoftTarget, with_target
from editlab.editing.methods.serac_model import SeracWrapper, cf_prefix_ids, embed_prompts, hidden_states, prepend
from editlab.vocab import PromptEncoder, prompt

if TYPE_CHECKING:
    from editlab.editing.methods.serac import SERAC


@dataclass(frozen=True)
class Query:
    """A prompt with its answer ("" = none), the fact ``"s r"`` it asks about, whose edit it belongs to, and the
    weight of its answer in the counterfactual NLL (the agent's posterior for a soft downstream answer, else 1)."""

    prompt: str
    target: str
    about: str
    example: int
    positive: bool
    weight: float = 1.0


def changing_downstream(ex: MetaExample, scope: str) -> SoftTarget | None:
    """The example's downstream fact if ``scope`` trains it in the edit's scope (``agent`` and the agent's
    argmax for it changes with the edit), else ``None``."""
    return ex.downstream if scope == "agent" and ex.downstream_changes else None


def queries(examples: Sequence[MetaExample], n_hard: int = 2, scope: str = "request") -> list[Query]:
    """The in-scope queries, locality facts and hard negatives of a batch (see the module docstring).

    ``scope="agent"``: an example's changing downstream fact is in scope, one query per object the case records
    for it (weighted by the agent's posterior), and is left out of the example's hard negatives; an unchanged
    downstream fact is the first of its same-subject hard negatives."""
    subjects = sorted({ex.request.subject for ex in examples})
    relations = sorted({ex.request.relation for ex in examples})
    out: list[Query] = []
    for i, ex in enumerate(examples):
        r = ex.request
        out += [Query(t.prompt, t.target, r.prompt, i, True) for t in ex.equivalents]
        down = changing_downstream(ex, scope)
        if down is not None:
            out += [Query(down.prompt, o, down.prompt, i, True, p) for o, p in zip(down.objects, down.probs,
                                                                                   strict=True)]
        out += [Query(t.prompt, t.target, t.prompt, i, False) for t in ex.locality]
        same_subject = [prompt(r.subject, x) for x in relations if x != r.relation]
        if scope == "agent" and ex.downstream is not None:
            same_subject = [h for h in same_subject if h != ex.downstream.prompt]
            if down is None:  # the downstream answer stays: a hard negative
                same_subject.insert(0, ex.downstream.prompt)
        hard = same_subject[:n_hard]
        hard += [prompt(x, r.relation) for x in subjects if x != r.subject][:n_hard]
        if r.text:  # a benchmark's request: no relation grid to build "s r'" / "s' r" from; its locality questions
            hard = []  # and the batch's other requests are the negatives (SERAC's zsRE training)
        out += [Query(h, "", h, i, False) for h in hard]
    return out


def in_scope(qs: Sequence[Query], examples: Sequence[MetaExample], scope: str = "request") -> list[list[bool]]:
    """(query, edit) -> whether the query is in the scope of the example's edit: it asks the edit's fact
    ``"s r"``, or (``scope="agent"``) the example's changing downstream fact. Whichever example the query came
    from: a hard negative of one edit may be in the scope of another edit of the batch."""
    facts = []
    for ex in examples:
        down = changing_downstream(ex, scope)
        facts.append({ex.request.prompt} | ({down.prompt} if down is not None else set()))
    return [[q.about in f for f in facts] for q in qs]


def query_batch(enc: PromptEncoder, qs: Sequence[Query]) -> TargetBatch:
    """Right-padded ``BOS prompt answer.`` rows (the evaluation's tokenisation; a query without answer is its
    prompt alone); ``target`` marks the answer tokens and the ``.`` that closes the sentence.

    The closing ``.`` is trained too: the exact protocol reads a greedy continuation up to the first ``.``,
    and a counterfactual model trained on the answer tokens alone went on copying the prefix after the
    object (measured: token accuracy 0.97, exact edit success 0.23 on the tiny model)."""
    prompts = enc.prompts([("", q.prompt) for q in qs])
    answers = [a if q.target else [] for q, a in zip(qs, enc.objects([f"{q.target or 'x'}." for q in qs]), strict=True)]
    ids, mask = prepend(prompts, answers, enc.tok.pad_token_id)
    target = torch.zeros_like(ids, dtype=torch.bool)
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        target[i, len(p): len(p) + len(a)] = True
    return TargetBatch(ids, mask, target, torch.tensor([len(p) - 1 for p in prompts]))


class SeracTrainer(L.LightningModule):
    """Trains ``cf`` (a copy of the base model) and ``classifier`` on a frozen ``base``."""

    def __init__(self, method: SERAC, base: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self.method, self.tok, self.enc = method, tokenizer, PromptEncoder(tokenizer)
        self.base = base.requires_grad_(False).eval()
        self.cf = copy.deepcopy(base).requires_grad_(True)
        self.classifier = method.new_classifier(base)

    def train(self, mode: bool = True) -> SeracTrainer:
        """The base model stays in eval mode (frozen); the trained parts follow ``mode``."""
        super().train(mode)
        self.base.eval()
        return self

    # ------------------------------------------------------------------ losses
    def losses(self, examples: Sequence[MetaExample]) -> dict[str, torch.Tensor]:
        reqs = [ex.request for ex in examples]
        scope = self.method.scope
        qs = queries(examples, scope=scope)
        batch = query_batch(self.enc, qs).to(self.device)
        pad = self.tok.pad_token_id
        with torch.no_grad():
            base_out = hidden_states(self.base, batch.ids, batch.mask)
        keys = embed_prompts(self.base, self.classifier, self.enc.prompts([("", r.prompt) for r in reqs]), pad)
        scores = self.classifier.score(self.classifier.embed(base_out.hidden_states, batch.mask), keys)  # (Q, T, N)
        same = torch.tensor(in_scope(qs, examples, scope), device=self.device)  # (Q, N)
        t = torch.arange(batch.ids.shape[1], device=self.device)
        read = (t[None] >= batch.last_prompt[:, None]) & batch.mask.bool()  # last prompt token and the answer's
        pos = read[:, :, None] & same[:, None, :]
        neg = read[:, :, None] & ~same[:, None, :]
        bce = nn.functional.binary_cross_entropy_with_logits
        cls_loss = 0.5 * (bce(scores[pos], torch.ones_like(scores[pos]))
                          + bce(scores[neg], torch.zeros_like(scores[neg])))

        prefixes = cf_prefix_ids(self.tok, reqs)
        rows = [batch.ids[i, : int(batch.mask[i].sum())].tolist() for i in range(len(qs))]
        ids, mask = prepend([prefixes[q.example] for q in qs], rows, pad)
        cf_logp = torch.log_softmax(self.cf(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                            use_cache=False).logits.float(), -1)
        shift = torch.tensor([len(prefixes[q.example]) for q in qs], device=self.device)
        # predicting positions (t predicts token t + 1): the answer's, or the last prompt token of a bare prompt
        pred = batch.target[:, 1:].clone()
        bare = ~pred.any(-1)
        pred[bare.nonzero()[:, 0], batch.last_prompt[bare]] = True
        r_i, t_i = pred.nonzero(as_tuple=True)
        cf_lp = cf_logp[r_i, t_i + shift[r_i]]  # (K, V)
        positive = torch.tensor([q.positive for q in qs], device=self.device)[r_i]
        nll = -cf_lp.gather(-1, batch.ids[r_i, t_i + 1][:, None])[:, 0]
        base_lp = torch.log_softmax(base_out.logits[r_i, t_i].float(), -1)
        kl = (base_lp.exp() * (base_lp - cf_lp)).sum(-1)
        if scope == "request":
            n_pos = max(1, sum(q.positive for q in qs))
            cf_loss = nll[positive].sum() / n_pos + self.method.c_loc * kl[~positive].mean()
        else:  # soft downstream answers weigh the agent's posterior; n_pos counts them by their weights
            weight = torch.tensor([q.weight for q in qs], device=self.device)[r_i]
            n_pos = max(1.0, sum(q.weight for q in qs if q.positive))
            cf_loss = (weight * nll)[positive].sum() / n_pos + self.method.c_loc * kl[~positive].mean()
        with torch.no_grad():
            acc = ((scores[pos] > 0).float().mean() + (scores[neg] <= 0).float().mean()) / 2
        return {"loss": cls_loss + cf_loss, "cls_loss": cls_loss, "cf_loss": cf_loss, "scope_acc": acc}

    def swapped(self, examples: Sequence[MetaExample]) -> list[MetaExample]:
        """``examples`` with each object swapped for an alternative with probability ``method.resample`` (see
        the module docstring), drawn from a generator seeded by the run's seed and the global step."""
        g = torch.Generator().manual_seed(torch.initial_seed() + self.global_step)
        swap = torch.rand(len(examples), generator=g) < self.method.resample
        picks = torch.randint(1 << 30, (len(examples),), generator=g).tolist()
        keep = [changing_downstream(ex, self.method.scope) is not None for ex in examples]
        return [with_target(ex, ex.alternatives[k % len(ex.alternatives)]) if s and ex.alternatives and not kept
                else ex for ex, s, k, kept in zip(examples, swap.tolist(), picks, keep, strict=True)]

    def training_step(self, batch: Sequence[MetaExample], batch_idx: int) -> torch.Tensor:
        out = self.losses(self.swapped(list(batch)))
        self.log_dict({f"train/{k}": v for k, v in out.items()}, batch_size=len(batch))
        return out["loss"]

    # ------------------------------------------------------------------ validation through the wrapper
    @torch.no_grad()
    def validation_step(self, batch: Sequence[MetaExample], batch_idx: int) -> None:
        examples = list(batch)
        out = self.losses(examples)
        reqs = [ex.request for ex in examples]
        pad = self.tok.pad_token_id
        keys = embed_prompts(self.base, self.classifier, self.enc.prompts([("", r.prompt) for r in reqs]), pad)
        wrapper = SeracWrapper(self.base, self.cf, self.classifier, keys, cf_prefix_ids(self.tok, reqs),
                               self.method.threshold)
        # teacher forced: queries with an answer
        qs = [q for q in queries(examples, scope=self.method.scope) if q.target]
        tb = query_batch(self.enc, qs).to(self.device)
        edited = wrapper(input_ids=tb.ids, attention_mask=tb.mask).logits[:, :-1].argmax(-1)
        base = self.base(input_ids=tb.ids, attention_mask=tb.mask).logits[:, :-1].argmax(-1)
        at = tb.target[:, 1:]
        success = [bool((edited[i] == tb.ids[i, 1:])[at[i]].all()) for i, q in enumerate(qs)
                   if q.positive and q.prompt == reqs[q.example].prompt]
        kept = [bool((edited[i] == base[i])[at[i]].all()) for i, q in enumerate(qs) if not q.positive]
        logged = {"val/loss": out["loss"], "val/scope_acc": out["scope_acc"],
                  "val/edit_success": sum(success) / max(1, len(success)),
                  "val/locality": sum(kept) / max(1, len(kept))}
        if self.method.scope == "agent":
            new = {i: d.objects[max(range(len(d.probs)), key=d.probs.__getitem__)] for i, d in
                   ((i, changing_downstream(ex, "agent")) for i, ex in enumerate(examples)) if d is not None}
            down = [bool((edited[i] == tb.ids[i, 1:])[at[i]].all()) for i, q in enumerate(qs)
                    if q.positive and q.about != reqs[q.example].prompt and q.target == new.get(q.example)]
            logged["val/downstream_success"] = sum(down) / max(1, len(down))
        self.log_dict(logged, batch_size=len(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([{"params": self.cf.parameters(), "lr": self.method.lr_cf},
                                  {"params": self.classifier.parameters(), "lr": self.method.lr_cls}],
                                 weight_decay=0.0)
