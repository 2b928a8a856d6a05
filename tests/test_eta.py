"""The plan of a long fit (editlab.runs.eta.RunPlan): said at the start, the rate and time left after the warm-up,
and a warning for a GPU-sized recipe on a CPU."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from editlab.runs import eta


def _trainer(step: int, device: str = "cpu"):
    return SimpleNamespace(is_global_zero=True, global_step=step, precision="bf16-mixed",
                           strategy=SimpleNamespace(root_device=torch.device(device)))


def test_plan_then_rate_and_time_left_once(monkeypatch, capsys):
    clock = iter([100.0, 104.0, 111.0, 200.0])
    monkeypatch.setattr(eta.time, "perf_counter", lambda: next(clock))
    plan = eta.RunPlan(n_steps=1000, tokens_per_step=8192, what="pretraining mistral_tiny", warmup_s=10)
    plan.on_train_start(_trainer(10), None)
    out = capsys.readouterr().err
    assert "plan: pretraining mistral_tiny: 1,000 steps of 8,192 tokens (8.2M tokens) on cpu, bf16-mixed" in out
    assert "resuming at step 10 (1% done)" in out and "warning" not in out
    for step in (11, 13, 21, 30):  # t = 100 (first step, not measured), 104 (too early), 111: 10 steps in 11 s
        plan.on_train_batch_end(_trainer(step), None)
    out = capsys.readouterr().err
    assert out.count("rate:") == 1 and "0.91 steps/s (7,447 tokens/s) -> about 18 min left for 979 steps" in out


def test_a_gpu_recipe_on_a_cpu_is_warned_at_the_start(capsys):
    plan = eta.RunPlan(n_steps=61_036, tokens_per_step=16_384, what="pretraining mistral_83m")
    plan.on_train_start(_trainer(0), None)
    err = capsys.readouterr().err
    assert "warning: 1,000M tokens is a GPU recipe" in err and "trainer=gpu" in err
    eta.RunPlan(n_steps=61_036, tokens_per_step=16_384, what="x").on_train_start(_trainer(0, "meta"), None)
    assert "warning" not in capsys.readouterr().err
