"""What a "no checkpoint" error offers: the finished pretraining runs of the world (editlab.lm.checkpoint)."""

from __future__ import annotations

from editlab.lm.checkpoint import trained_overrides


def test_finished_runs_become_the_overrides_that_select_them(tmp_path):
    for run, done in [("mistral_tiny_demo-s0", True), ("mistral_tiny-s1", True), ("mistral_83m-s0", False)]:
        (tmp_path / run / "model").mkdir(parents=True)
        if done:
            (tmp_path / run / "model" / "COMPLETE").write_text("x\n")
    assert trained_overrides(tmp_path) == ["model=mistral_tiny model_seed=1", "model=mistral_tiny_demo"]
    assert trained_overrides(tmp_path / "absent") == []
