"""The test-only toys (tests/editing/toys.py) through the real sequential protocol: a stop, a resume, an export.

Each toy runs ``edit_run`` (edits.mode=sequential) in a subprocess three times: uninterrupted, stopped
with a real SIGTERM after its first edits, and re-run (which resumes from ``last.ckpt``). The toys are
not registered in the product, so the subprocess (:data:`DRIVER`) registers them itself and then calls
``edit_run`` under :func:`editlab.cli.run_cli`, as ``edit.py`` does. Checks:

- the stop: exit 143, ``last.ckpt`` written after a whole edit, nothing that looks complete;
- the resume: records (minus timings), metrics summary, curve and exported model equal the uninterrupted
  run's, i.e. ``toy_memory``'s memory went into the checkpoint and its wrapper was re-inserted before
  Lightning loaded the weights (state-dict keys ``model.base.*``), ``toy_learned_step``'s edited
  weights came back;
- the export: ``load_edited(run_dir/"model")`` gives the model and method that score the edited cases as
  the records' final scores; for ``toy_memory`` that is the wrapper with all edits in its memory over
  the unchanged base weights (the plain weights score as the base model did); for ``toy_learned_step``
  the edited weights themselves.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from editlab.editing.registry import get_method
from editlab.editing.trainable import EditorTraining, save_editor
from editlab.eval.probes import max_object_tokens, score_cases
from editlab.lm.checkpoint import load_weights, model_id
from editlab.runs.export import METHOD_STATE, load_edited
from editlab.runs.train_editor import fit_editor
from editlab.vocab import PromptEncoder
from tests.editing import toys
from tests.editing.test_edit_run import ROOT, _records, _weights
from tests.editing.test_edit_stop import _lines, _strip, _summary, _wait

N = 8  # edits per stream: the stop lands after edit 2..7 (it must come before the last)

# The subprocess: register the test-only toys, then what edit.py's edit() does with plain arguments.
DRIVER = """
import json, sys
from pathlib import Path
from editlab.cli import run_cli
from tests.editing.toys import register_toys

def main(a):
    from editlab.runs.config import EditRun, EditsConfig, MetricsConfig
    from editlab.runs.edit import edit_run
    from editlab.editing.registry import get_method
    from editlab.world.loading import World
    register_toys()
    return edit_run(EditRun(world=World.open(a["world"]), checkpoint=Path(a["checkpoint"]),
                            method=get_method(a["method"], a["hparams"]), edits=EditsConfig(**a["edits"]),
                            metrics=MetricsConfig(**a["metrics"]), run_dir=Path(a["run_dir"]), seed=0, run_config=a,
                            device="cpu", progress=False, trainer=a["trainer"],
                            cache_root=Path(a["run_dir"]).parent / "stats",
                            editor_path=Path(a["editor_path"]) if a["editor_path"] else None))

run_cli(lambda: main(json.loads(sys.argv[1])))
"""

HPARAMS = {"toy_memory": {"boost": 30.0}, "toy_learned_step": {"steps": 4}}


def _trainer() -> dict:
    """The sequential Trainer settings edit.py composes (conf/trainer/sequential_edit.yaml)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="edit", overrides=["edits.mode=sequential"])
    return OmegaConf.to_container(cfg.trainer, resolve=True)


def _editor(world, ckpt: Path, out: Path) -> Path:
    """A briefly meta-trained toy_learned_step editor for the checkpoint (recording its model id)."""
    method = get_method("toy_learned_step", HPARAMS["toy_learned_step"])
    tok = PreTrainedTokenizerFast.from_pretrained(str(world.dir))
    training = EditorTraining(max_steps=6, batch_size=4, val_fraction=0.2, val_every=6)
    state, metrics = fit_editor(method, load_weights(ckpt).eval(), tok, world.meta_cases[:40], training, seed=0)
    return save_editor(out, method, state, model_id(ckpt), {"test": "toy_protocols"}, metrics)


def _start(args: dict, run_dir: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps({**args, "run_dir": str(run_dir)})], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))


def _run(args: dict, run_dir: Path, log: Path) -> None:
    rc = _start(args, run_dir, log).wait(timeout=600)
    assert rc == 0, log.read_text()[-3000:]


@pytest.fixture(autouse=True)
def _toys():
    with toys.toys_registered():  # load_edited rebuilds the method by its registered name
        yield


# the memory toy's stream is slow (32 s on 2 cores); GRACE's and SERAC's memories pass the contract's state and export
# round trips in the default suite
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "toy_memory" else n
                                  for n in toys.NAMES])
def test_toy_sequential_stream_stops_resumes_and_exports(name, tiny_world, ckpt, tmp_path):
    editor = _editor(tiny_world, ckpt, tmp_path / "editor") if name == "toy_learned_step" else None
    args = {"world": str(tiny_world.dir), "checkpoint": str(ckpt), "method": name, "hparams": HPARAMS[name],
            "editor_path": str(editor) if editor else None, "trainer": _trainer(),
            "edits": {"mode": "sequential", "n": N, "batch_size": 1, "eval_every": 2, "ckpt_every": 100},
            "metrics": {"n_locality": 5, "n_samples": 0}}
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    _run(args, full, tmp_path / "full.log")

    log = tmp_path / "stopped.log"
    proc = _start(args, stopped, log)
    # ckpt_every=100 never saves during this stream: the only checkpoint is the one the stop writes
    _wait(proc, lambda: _lines(stopped / "results.jsonl.partial") >= 2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 143, log.read_text()[-3000:]
    assert "interrupted (SIGTERM" in log.read_text()
    last = stopped / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert not any((stopped / f).exists() for f in ("results.jsonl", "metrics.json", "model"))
    saved = torch.load(last, map_location="cpu", weights_only=False)
    done = len(saved["editlab"]["applied"])
    assert 2 <= done < N and _lines(stopped / "results.jsonl.partial") == done  # stopped after a whole edit
    print(f"{name}: stopped after {done} of {N} edits")
    if name == "toy_memory":  # the memory is in the checkpoint, the weights under the wrapper's keys
        assert len(saved["editlab"]["method_state"]["prompt_len"]) == done
        assert saved["state_dict"] and all(k.startswith("model.base.") for k in saved["state_dict"])

    _run(args, stopped, tmp_path / "resume.log")
    assert _strip(_records(stopped)) == _strip(_records(full))
    assert _summary(stopped) == _summary(full)
    assert (stopped / "curve.jsonl").read_text() == (full / "curve.jsonl").read_text()
    assert len((full / "curve.jsonl").read_text().splitlines()) == N // 2
    assert torch.equal(_weights(stopped / "model"), _weights(full / "model"))
    has_state = (full / "model" / METHOD_STATE).is_file()
    assert has_state == (name == "toy_memory") == (stopped / "model" / METHOD_STATE).is_file()
    if has_state:
        a, b = (load_file(str(d / "model" / METHOD_STATE)) for d in (full, stopped))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the exported model loads back with its method and scores the edited cases as the records' final scores
    recs = _records(stopped)
    cases = {c["case_id"]: c for c in tiny_world.cases}
    edited = [cases[r["case_id"]] for r in recs]
    tok = PreTrainedTokenizerFast.from_pretrained(str(tiny_world.dir))
    enc, mx = PromptEncoder(tok), max_object_tokens(tok, tiny_world.world["objects"])
    loaded, method = load_edited(stopped / "model", tiny_world.world["hash"])
    assert method is not None and method.name == name
    scores = score_cases(loaded, enc, edited, mx, prefixes=[method.context_prefix()] * len(edited))
    for rec, sc in zip(recs, scores, strict=True):
        got = sc.to_json()
        assert got["gen"] == rec["final"]["gen"]
        assert got["p"] == pytest.approx(rec["final"]["p"], rel=1e-5, abs=1e-7)
    finals = [r["final"] for r in recs]
    pres = [r["pre"] for r in recs]
    ln = lambda x: math.log(max(x, 1e-30))  # noqa: E731
    moved = [abs(ln(a) - ln(b)) for f, p in zip(finals, pres, strict=True) for a, b in zip(f["p"], p["p"], strict=True)]
    assert max(moved) > 0.5  # the edits changed the scores (by a factor; the random base model's p are tiny)
    plain = load_weights(stopped / "model").eval()
    plain_scores = [s.to_json() for s in score_cases(plain, enc, edited, mx)]
    if name == "toy_memory":
        # the wrapper holds every edit; the exported weights are the untouched base, which scores as before
        assert isinstance(loaded, toys.MemoryWrapper) and len(loaded.entries) == N
        assert torch.equal(_weights(stopped / "model"), _weights(ckpt))
        # the boosts decode every target (followed by whatever the random base model says after it)
        assert all(f["gen"]["s1r1"].strip().startswith(c["requested_object"]) for f, c in zip(finals, edited,
                                                                                              strict=True))
        for ps, pre in zip(plain_scores, pres, strict=True):
            assert ps["gen"] == pre["gen"] and ps["p"] == pytest.approx(pre["p"], rel=1e-5, abs=1e-7)
    else:
        # the edit lives in the weights: no wrapper, and the plain weights are the edited model
        assert type(loaded) is type(plain) and not torch.equal(_weights(stopped / "model"), _weights(ckpt))
        assert [ps["gen"] for ps in plain_scores] == [f["gen"] for f in finals]
