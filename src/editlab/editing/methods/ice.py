"""In-context editing (ICE): the edit is text before the probe, no weight changes.

Following the in-context baselines of Hase et al. (2024) and EasyEdit's ICE, the handle's
``prefix`` is the edit as a corpus sentence, ``"s r o*."``, or with ``template="tf"`` as a true TF
sentence, ``'"s r o*" is true.'`` (both forms occur in the pretraining corpus, world.md). The
scorer puts the prefix between BOS and every probe.

Sequential editing keeps the committed edits as method state, so the prefix accumulates: edit k
sees the sentences of edits 1..k. ``restore`` drops the pending edit; ``commit`` appends it to the
memory. :meth:`ICE.state_dict` stores the memory as a uint8 tensor of UTF-8 text (one sentence per
line), so it round-trips through safetensors like any other method state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from editlab.editing.base import EditContext, EditHandle, EditMethod, EditRequest, StepHook
from editlab.editing.registry import register
from editlab.errors import EditlabError

TEMPLATES = ("sentence", "tf")


def lines_tensor(lines: Sequence[str]) -> torch.Tensor:
    """Text lines as a uint8 tensor of UTF-8 (one line per ``\\n``): text method state that safetensors stores."""
    return torch.tensor(list("\n".join(lines).encode("utf-8")), dtype=torch.uint8)


def tensor_lines(t: torch.Tensor) -> list[str]:
    """The lines :func:`lines_tensor` stored (``[]`` for an empty tensor)."""
    text = bytes(t.tolist()).decode("utf-8")
    return text.split("\n") if text else []


@register
@dataclass
class ICE(EditMethod):
    """Prepend the edit sentence(s) to every probe.

    Attributes:
        template: ``sentence`` ("s r o*.") or ``tf`` ('"s r o*" is true.').
    """

    name = "ice"
    in_context = True
    template: str = "sentence"
    memory: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise EditlabError(f"method ice: template={self.template!r} must be one of {', '.join(TEMPLATES)}")

    def sentence(self, r: EditRequest) -> str:
        return f'"{r.sentence}" is true.' if self.template == "tf" else f"{r.sentence}."

    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
              on_step: StepHook | None = None) -> EditHandle:
        new = [self.sentence(r) for r in requests]

        def commit() -> nn.Module:
            self.memory.extend(new)
            return model

        return EditHandle(model, restore_fn=lambda: model, commit_fn=commit, prefix=" ".join(self.memory + new),
                          info={"steps": 0, "update_norm": 0.0, "context_sentences": len(self.memory) + len(new)})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"memory": lines_tensor(self.memory)}

    def load_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> nn.Module:
        self.memory = tensor_lines(state["memory"])
        return model

    def context_prefix(self) -> str:
        """The committed edits' sentences: what an exported ICE model puts before every probe."""
        return " ".join(self.memory)
