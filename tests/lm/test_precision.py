"""precision: auto picks bf16 autocast only where the hardware computes bf16 natively; explicit values win."""

from __future__ import annotations

import logging

import pytest

from editlab.lm import precision as P


def test_cpu_without_native_bf16_trains_in_fp32(monkeypatch):
    """The new user's AVX2 machine: no AVX-512 BF16 / AMX -> 32-true (forced here with EDITLAB_CPU_BF16=0)."""
    monkeypatch.setenv("EDITLAB_CPU_BF16", "0")
    assert P.resolve_precision("auto", "cpu") == "32-true"


def test_cpu_with_native_bf16_uses_bf16_autocast(monkeypatch):
    monkeypatch.setenv("EDITLAB_CPU_BF16", "1")
    assert P.resolve_precision("auto", "cpu") == "bf16-mixed"


@pytest.mark.parametrize("bf16", ["0", "1"])
@pytest.mark.parametrize(("requested", "expected"), [("32-true", "32-true"), ("bf16-mixed", "bf16-mixed"),
                                                     (32, "32"), ("16-mixed", "16-mixed")])
def test_an_explicit_precision_always_wins(monkeypatch, bf16, requested, expected):
    monkeypatch.setenv("EDITLAB_CPU_BF16", bf16)
    assert P.resolve_precision(requested, "cpu") == expected
    assert P.resolve_precision(requested, "gpu") == expected


@pytest.mark.parametrize(("accelerator", "cuda", "cuda_bf16", "cpu_bf16", "expected"), [
    ("gpu", True, True, "0", "bf16-mixed"),     # Ampere+ GPU on an AVX2 host: the GPU decides
    ("cuda", True, False, "1", "32-true"),      # V100-class GPU: no bf16, and no untuned fp16 loss scaling
    ("auto", True, True, "0", "bf16-mixed"),    # auto with CUDA present = GPU
    ("auto", False, True, "0", "32-true"),      # auto without CUDA = CPU rules
    ("auto", False, False, "1", "bf16-mixed"),
    ("cpu", True, True, "0", "32-true"),        # a CPU run on a GPU machine follows the CPU
])
def test_gpu_and_auto_accelerators(monkeypatch, accelerator, cuda, cuda_bf16, cpu_bf16, expected):
    monkeypatch.setenv("EDITLAB_CPU_BF16", cpu_bf16)
    monkeypatch.setattr(P, "_cuda_available", lambda: cuda)
    monkeypatch.setattr(P, "_cuda_bf16", lambda: cuda_bf16)
    assert P.resolve_precision("auto", accelerator) == expected


def test_the_decision_is_logged_once_with_the_cpu_capability(monkeypatch, caplog):
    from editlab.utils.hardware import cpu_capability

    monkeypatch.setenv("EDITLAB_CPU_BF16", "0")
    with caplog.at_level(logging.INFO, logger="editlab.lm.precision"):
        assert P.resolve_and_log("auto", "cpu") == "32-true"
    lines = [r.getMessage() for r in caplog.records if r.name == "editlab.lm.precision"]
    assert len(lines) == 1
    assert "32-true (auto" in lines[0] and cpu_capability() in lines[0] and "native CPU bf16: no" in lines[0]


def test_cpu_and_ddp_presets_ask_for_auto():
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF

    for preset in ("cpu", "ddp"):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"trainer={preset}"])
        assert cfg.trainer.precision == "auto"
