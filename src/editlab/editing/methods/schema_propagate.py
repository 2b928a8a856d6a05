"""Schema-guided self-propagation: an edit's consequence read from the model itself, applied with the request.

``method=propagate`` is told each edit's implications by the world's agent; a real editor has no agent. What it can
know is the knowledge graph's *schema* (:class:`~editlab.editing.base.RelationSchema`): that relation r_d depends on
relation r_u, which objects each relation takes, which subjects carry a relation. The object-level consequence of
"s1 r_u o*" is then read from the model: among the subjects whose greedy answer on r_u is o* (the reference
subjects), what does it answer on r_d? Their mean sequence probability of each object of r_d is the model's own
p(o_d | r_d, o_u = o*); its mode o_d is the implied fact "s1 r_d o_d", applied as one batch with the request by
the base editor (as :class:`~editlab.editing.methods.propagate.Propagate` does with the agent's implications).

``implied_target``:

- ``conditional`` (default): the implied fact asks for the probability a rational learner would hold,
  ``q = c m(o_d) + (1 - c) p_0(o_d)`` with c the request's credence (1 unless ``edits.target=credence``), m(o_d)
  the reference subjects' mean probability and p_0 the model's probability for s1 before the edit: the upstream
  answer is o* with probability c, else whatever it was (the marginal the world's agent computes, with the model's
  own numbers). Needs a base that aims at a probability (``supports_credence``);
- ``certain``: the implied fact asks for probability 1 (what ``propagate`` does), and is added only when o_d is
  not already s1's most probable object.

``estimate``: how m is read from the references: ``probability`` (default), the mean of their sequence
probabilities of each object; ``frequency``, the share of references whose most probable object it is (the
population's conditional, as a count-based learner estimates it, without each subject's own confidence).

Only the subject's own downstream fact is propagated (the agent also moves other subjects' answers by refitting
its dependency table; those shifts are small and the model's table is its weights). The greedy upstream answers
are read once, in :meth:`SchemaPropagate.prepare`, from the model before any edit (in a sequential run, earlier
edits do not move them): one greedy decode per subject of each upstream relation, ~1,250 on the tiny world;
``max_subjects`` caps the subjects read per relation for larger graphs. Each edit then scores the pairs (subject,
object of r_d) of s1 and its reference subjects on the model being edited: (|references| + 1) x |objects(r_d)|
teacher-forced sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from editlab.editing.base import EditContext, EditHandle, EditRequest, RelationSchema, StepHook
from editlab.editing.loss import request_nll, target_batch
from editlab.editing.methods.propagate import Propagate
from editlab.editing.registry import register
from editlab.errors import EditlabError
from editlab.utils.padding import left_padded
from editlab.vocab import PromptEncoder, answer_text

IMPLIED_TARGETS = ("conditional", "certain")
ESTIMATES = ("probability", "frequency")


def sequence_probs(model: nn.Module, enc: PromptEncoder, subjects: Sequence[str], relation: str,
                   objects: Sequence[str], batch: int = 512) -> torch.Tensor:
    """p_LM(o | BOS "s r") for every subject (rows) and object (columns), teacher-forced over the object's tokens,
    with the evaluation's tokenisation (:func:`~editlab.editing.loss.target_batch`); (S, K) float64 on the CPU."""
    reqs = [EditRequest(s, relation, o) for s in subjects for o in objects]
    out = []
    with torch.no_grad():
        for i in range(0, len(reqs), batch):
            tb = target_batch(enc, reqs[i : i + batch]).to(next(model.parameters()).device)
            out.append(torch.exp(-request_nll(model, tb).double()).cpu())
    return torch.cat(out).reshape(len(subjects), len(objects)) if out else torch.zeros(0, len(objects))


def greedy_answers(model: nn.Module, enc: PromptEncoder, subjects: Sequence[str], relation: str, max_new_tokens: int,
                   batch: int = 256) -> list[str]:
    """Each subject's greedy answer to BOS "s r" (length-sorted, left-padded batches through the model's own
    ``generate``), cut as the evaluation's exact rule cuts it (:func:`~editlab.vocab.answer_text`)."""
    tok = enc.tok
    prompts = enc.prompts([("", f"{s} {relation}") for s in subjects])
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [""] * len(prompts)
    with torch.no_grad():
        for a in range(0, len(order), batch):
            idx = order[a : a + batch]
            ids, mask = left_padded(prompts, idx, tok.pad_token_id)
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
            for i, text in zip(idx, tok.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True), strict=True):
                out[i] = answer_text(text)
    return out


@register
@dataclass
class SchemaPropagate(Propagate):
    name = "schema_propagate"
    uses_implied = False  # the consequences come from the model, not the agent

    implied_target: str = "conditional"
    estimate: str = "probability"
    max_subjects: int | None = None
    score_batch: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.implied_target not in IMPLIED_TARGETS:
            raise EditlabError(f"implied_target={self.implied_target!r} must be one of {', '.join(IMPLIED_TARGETS)}")
        if self.estimate not in ESTIMATES:
            raise EditlabError(f"estimate={self.estimate!r} must be one of {', '.join(ESTIMATES)}")
        if self.implied_target == "conditional" and not self.base_method.supports_credence:
            raise EditlabError(f"schema_propagate with implied_target=conditional asks {self.base} for probabilities "
                               "below 1, which it cannot aim at: use implied_target=certain or a base that optimises "
                               "the target loss (lora, adalora, ft_l, ft_m, memit, alphaedit, grace)")
        if self.max_subjects is not None and self.max_subjects < 1:
            raise EditlabError(f"max_subjects={self.max_subjects} must be >= 1 (or null: every subject)")
        self.schema: RelationSchema | None = None
        self.answers: dict[str, dict[str, str]] = {}  # upstream relation -> subject -> the model's greedy answer
        self.enc: PromptEncoder | None = None

    def prepare(self, model: nn.Module, ctx: EditContext) -> None:
        if ctx.schema is None:
            raise EditlabError("method schema_propagate needs the knowledge graph's relation schema "
                               "(EditContext.schema; edit.py fills it from the world's knowledge graph)")
        super().prepare(model, ctx)
        self.schema, self.enc = ctx.schema, PromptEncoder(ctx.tokenizer)
        longest = max(len(o) for objs in ctx.schema.objects.values() for o in self.enc.objects(list(objs)))
        self.answers = {}
        for u in sorted(ctx.schema.downstream):
            subjects = ctx.schema.subjects[u][: self.max_subjects]
            self.answers[u] = dict(zip(subjects, greedy_answers(model, self.enc, subjects, u, longest + 1,
                                                                self.score_batch), strict=True))

    def consequence(self, model: nn.Module, request: EditRequest) -> EditRequest | None:
        """The implied downstream fact of ``request`` read from the model (module docstring), or None: no downstream
        relation, s1 without it, or no other subject with it whose upstream answer is o*."""
        schema = self.schema
        d = schema.downstream.get(request.relation)
        if d is None or request.subject not in schema.subjects[d]:
            return None
        has_d = set(schema.subjects[d])
        refs = [s for s, a in self.answers[request.relation].items()
                if a == request.target and s != request.subject and s in has_d]
        if not refs:
            return None
        objects = schema.objects[d]
        probs = sequence_probs(model, self.enc, [request.subject, *refs], d, objects, self.score_batch)
        p0, m = probs[0], probs[1:].mean(0)  # s1 before the edit; the model's p(o_d | r_d, o_u = o*)
        if self.estimate == "frequency":  # the share of references whose most probable object is o_d
            m = torch.bincount(probs[1:].argmax(1), minlength=len(objects)).double() / len(refs)
        k = int(m.argmax())
        if self.implied_target == "certain":
            return None if int(p0.argmax()) == k else EditRequest(request.subject, d, objects[k],
                                                                  f"{request.case_id}/implied")
        c = float(request.credence)
        q = min(c * float(m[k]) + (1 - c) * float(p0[k]), 1.0)
        return EditRequest(request.subject, d, objects[k], f"{request.case_id}/implied", credence=q)

    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
              on_step: StepHook | None = None) -> EditHandle:
        if self.schema is None:
            raise EditlabError("schema_propagate.apply before prepare: call prepare(model, ctx) first")
        filled = [replace(r, implied=tuple(x for x in [self.consequence(model, r)] if x is not None))
                  for r in requests]
        return super().apply(model, filled, ctx, on_step=on_step)
