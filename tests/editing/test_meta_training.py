"""Meta-training raises held-out edit success (MEND; MALMEN): a check that can fail, shown failing on a broken run.

Setting: the fixture model (``tiny_lm``), the method's reference defaults (block form, loss reduction, gradient
clip, c_edit / c_loc) with a step ``alpha_init`` ten times too large, so the untrained editor overshoots:
its edits wreck the model and hit few targets. A short meta-training (fit_editor, float32) must bring the
edits back, measured on the validation split (subjects never trained on), against the *untrained* editor
with the same running statistics (the training batches pushed through the normaliser with no step taken), so
the two differ only in what the optimizer learned.

On this model ten-odd steps teach the per-layer steps (shrinking alpha: held-out success 0.10 -> 0.41 for MEND
in 12 steps, 0.21 -> 0.46 for MALMEN in 10), the editor network hardly contributes yet (its learning alone
does not raise success in 25 steps); so the broken variant takes the steps out of the meta-gradient (``alpha``
built with ``requires_grad=False``, the network still trains: 0.05 and 0.23) and the same check must fail.
Deterministic on a CPU in float32; about 5 s of one core per method.
"""

from __future__ import annotations

import copy

import pytest
import torch

from editlab.editing import registry
from editlab.editing.meta_data import MetaBatch
from editlab.editing.methods.malmen import MalmenTrainer, aggregate
from editlab.editing.trainable import EditorTraining, MetaDataModule
from editlab.runs.train_editor import FitOptions, fit_editor

MARGIN = 0.15  # a rise of at least 6 of the 39 held-out edits
CASES, VAL_FRACTION, BATCH, SEED = 200, 0.2, 8, 0
MEND = {"rank": 64, "alpha_init": 3.0e-02, "lr": 1.0e-04, "lr_alpha": 2.0e-03}
MALMEN = {"rank": 64, "layers": [-4, -3, -2, -1], "lm_batch": 8, "alpha_init": 5.0e-02, "lr_alpha": 3.0e-03}
STEPS = {"mend": 12, "malmen": 10}


def assert_rises(untrained: float, trained: float, what: str) -> None:
    """The check: held-out edit success after meta-training is at least ``MARGIN`` above the untrained editor's."""
    assert trained >= untrained + MARGIN, (f"{what}: held-out edit success {untrained:.3f} untrained -> {trained:.3f} "
                                          f"meta-trained; meta-training did not raise it by {MARGIN}")


def _observe(module, batch: MetaBatch) -> None:
    """Push a training batch through the untrained editor's normaliser, as a training step does, and nothing else."""
    if isinstance(module, MalmenTrainer):
        aggregate(module.method, module.editor, module.base, module.modules_, module.enc,
                  [ex.request for ex in batch], observe=True)
    else:
        module.meta_loss(batch)  # training mode: the normaliser merges the rows


def _val_stats(module, batch: MetaBatch) -> dict[str, float]:
    """Validation metrics of one batch (MALMEN: its edits aggregated into one shift, as its validation_step)."""
    if isinstance(module, MalmenTrainer):
        return module.meta_step(batch, backward=False)[1]
    return module.meta_loss(batch)[1]


def _untrained_success(method, tiny_lm, dm: MetaDataModule, steps: int) -> float:
    """Held-out edit success of the untrained editor after its normaliser saw the first ``steps`` training batches
    (the statistics a ``steps``-step run ends with; nothing else changes)."""
    torch.manual_seed(SEED)
    module = method.training_module(copy.deepcopy(tiny_lm.model), tiny_lm.tok, EditorTraining()).train()
    batches = iter(dm.train_dataloader())
    with torch.no_grad():
        for _ in range(steps):
            _observe(module, next(batches))
    module.eval()
    val = dm.val_cases
    hits = [_val_stats(module, MetaBatch(val[i: i + BATCH]))["edit_success"] * len(val[i: i + BATCH])
            for i in range(0, len(val), BATCH)]
    return sum(hits) / len(val)


def _trained(method, tiny_lm, steps: int) -> tuple[dict[str, torch.Tensor], float]:
    """(editor state, held-out edit success) after ``steps`` meta-training steps validated once at the end."""
    training = EditorTraining(max_steps=steps, batch_size=BATCH, val_fraction=VAL_FRACTION, val_every=steps,
                              patience=None)
    state, metrics = fit_editor(method, copy.deepcopy(tiny_lm.model), tiny_lm.tok, tiny_lm.world.meta_cases[:CASES],
                                training, seed=SEED, options=FitOptions(trainer_kwargs={"precision": "32-true"}))
    return state, metrics["val/edit_success"]


@pytest.mark.parametrize(("name", "hp", "reference"), [
    ("mend", MEND, ("mend", "mean", 100.0)),
    ("malmen", MALMEN, ("malmen", "mean", 1.0)),
])
def test_meta_training_raises_held_out_edit_success_and_the_check_fails_when_the_steps_get_no_gradient(
        name, hp, reference, tiny_lm, monkeypatch):
    method = registry.get_method(name, hp)
    assert (method.block, method.loss_reduction, method.max_grad_norm) == reference  # the reference code's defaults
    dm = MetaDataModule(tiny_lm.world.meta_cases[:CASES], BATCH, VAL_FRACTION, SEED)
    untrained = _untrained_success(method, tiny_lm, dm, STEPS[name])
    state, trained = _trained(method, tiny_lm, STEPS[name])
    print(f"{name}: held-out edit success {untrained:.3f} -> {trained:.3f}, alpha {hp['alpha_init']:.1e} -> "
          f"{float(state['alpha'].mean()):.1e}")
    assert_rises(untrained, trained, name)

    build = type(method).build_editor

    def steps_cut(self, model: torch.nn.Module):  # the broken editor: no meta-gradient ever reaches alpha
        editor = build(self, model)
        editor.alpha.requires_grad_(False)
        return editor

    monkeypatch.setattr(type(method), "build_editor", steps_cut)
    state, broken = _trained(registry.get_method(name, hp), tiny_lm, STEPS[name])
    assert torch.equal(state["alpha"], torch.full_like(state["alpha"], hp["alpha_init"]))
    with pytest.raises(AssertionError, match="did not raise it") as failed:
        assert_rises(untrained, broken, f"{name}, steps cut")
    print(failed.value)
