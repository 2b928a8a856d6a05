"""What the machine computes natively, decided once per process: CPU capability and bf16 support.

Why this exists: on a CPU without native bf16 (no AVX-512 BF16, no AMX) PyTorch emulates bf16
matmuls, ~90x slower than fp32 (a 512x512 bf16 matmul ran at 0.6 GFLOP/s against 52 GFLOP/s in fp32
on a 2-core AVX2 EPYC). So CPU defaults use bf16 autocast only where the hardware has it, and every
benchmark JSON records what it ran on (:func:`describe`).
"""

from __future__ import annotations

import functools
import os
import platform
import resource

import torch


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max allocated since the last reset; CPU: the process's peak RSS so far (Linux KiB -> MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resolve_device(name: str) -> torch.device:
    """The ``device`` setting of an entry script: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda[:i]``."""
    from editlab.errors import EditlabError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EditlabError(f"device={name} but no CUDA device is available; use device=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise EditlabError(f"device={name} is not a device; use auto, cpu or cuda") from None


@functools.cache
def cpu_capability() -> str:
    """ATen's CPU kernel level: ``"AVX512"``, ``"AVX2"``, ``"DEFAULT"`` (or the ARM equivalents)."""
    return str(torch.backends.cpu.get_cpu_capability())


def native_bf16() -> bool:
    """True when this CPU computes bf16 matmuls natively (AVX-512 BF16 or AMX tiles).

    ``EDITLAB_CPU_BF16=0`` / ``=1`` overrides the detection (tests use it to force the fp32 path).
    """
    forced = os.environ.get("EDITLAB_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    return _detected_bf16()


@functools.cache
def _detected_bf16() -> bool:
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(precision: str | None = None) -> dict:
    """The machine facts every benchmark JSON carries: device, CPU model and capability, bf16, threads.

    Args:
        precision: the precision the measured code ran in (e.g. ``"32-true"``, ``"bf16-mixed"``,
            ``"float32"``); recorded as given.
    """
    out = {"device": "cuda" if torch.cuda.is_available() else "cpu", "cpu_model": cpu_model(),
           "cpu_capability": cpu_capability(), "cpu_native_bf16": native_bf16(),
           "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    if precision is not None:
        out["precision"] = precision
    return out


PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A6000": 155e12, "L40S": 362e12}
"""Dense bf16 peak FLOP/s of the GPUs a model-FLOPs utilisation is quoted for (vendor data sheets, no sparsity)."""


def mfu(device_name: str, params: int, n_layers: int, hidden: int, seq_len: int, tokens_per_s: float) -> float | None:
    """Model-FLOPs utilisation: ``(6 N + 12 L d T) * tokens/s / peak`` (PaLM's appendix B count: weights' forward and
    backward plus attention scores), or None for a device without a listed peak."""
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in device_name), None)
    return round((6 * params + 12 * n_layers * hidden * seq_len) * tokens_per_s / peak, 3) if peak else None
