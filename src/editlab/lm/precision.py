"""``precision: auto``: the training precision chosen once, at start, from what the hardware computes natively.

Why: bf16 autocast halves memory traffic and is faster where the hardware has bf16 units (GPUs since
Ampere, CPUs with AVX-512 BF16 or AMX), but on a CPU without them PyTorch emulates bf16 matmuls ~90x
slower than fp32 (see :mod:`editlab.utils.hardware`). So ``auto`` picks bf16-mixed only where it is
native, fp32 (``32-true``) elsewhere; an explicit ``trainer.precision=...`` always wins.
"""

from __future__ import annotations

import logging

import torch

from editlab.utils.hardware import cpu_capability, native_bf16

log = logging.getLogger(__name__)

AUTO = "auto"


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _cuda_bf16() -> bool:
    return torch.cuda.is_bf16_supported()


def resolve_precision(requested: str | int, accelerator: str) -> str:
    """The Lightning precision to train with.

    Args:
        requested: ``trainer.precision`` as configured; anything but ``"auto"`` is returned as given
            (as a string: Hydra turns ``trainer.precision=32`` into an int), Lightning validates it.
        accelerator: ``trainer.accelerator`` (``cpu``, ``gpu``/``cuda`` or ``auto``: a GPU when CUDA is
            available, as Lightning decides).

    ``auto`` on a GPU: ``bf16-mixed`` where the GPU supports bf16, else ``32-true`` (fp16 would need
    loss scaling, which the recipes were not tuned with). On a CPU: ``bf16-mixed`` only with native
    bf16 (:func:`~editlab.utils.hardware.native_bf16`, ``EDITLAB_CPU_BF16=0/1`` overrides), else ``32-true``.
    """
    if str(requested) != AUTO:
        return str(requested)
    gpu = accelerator in ("gpu", "cuda") or (accelerator == AUTO and _cuda_available())
    if gpu:
        return "bf16-mixed" if _cuda_bf16() else "32-true"
    return "bf16-mixed" if native_bf16() else "32-true"


def describe_choice(requested: str | int, accelerator: str, chosen: str) -> str:
    """One log line: what was chosen, and why (the CPU capability and native-bf16 verdict)."""
    how = "auto" if str(requested) == AUTO else "as configured"
    return (f"precision: {chosen} ({how}; accelerator={accelerator}, CPU capability {cpu_capability()}, "
            f"native CPU bf16: {'yes' if native_bf16() else 'no'})")


def resolve_and_log(requested: str | int, accelerator: str) -> str:
    """:func:`resolve_precision`, logged once (INFO) with the CPU capability."""
    chosen = resolve_precision(requested, accelerator)
    log.info(describe_choice(requested, accelerator, chosen))
    return chosen
