"""edit.py end to end on a small random model: records, resume of a killed sequential stream, agent stream, errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from editlab.world.gold import case_gold
from editlab.world.loading import World
from editlab.world.stream import AgentStream

ROOT = Path(__file__).resolve().parents[2]
FAST = ["method.hparams.steps=3", "method.hparams.lr=0.01", "metrics.n_locality=10", "metrics.n_samples=1",
        "metrics.sample_tokens=8", "progress=false", "device=cpu"]


def _cli(world, ckpt: Path, run_dir: Path, extra: list[str], popen: bool = False):
    cmd = [sys.executable, "edit.py", f"data.cache_dir={world.dir.parent}", f"checkpoint={ckpt}",
           f"run_dir={run_dir}", *FAST, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]


def test_single_mode_writes_complete_records_and_metrics(tiny_world, ckpt, tmp_path):
    run = tmp_path / "single"
    res = _cli(tiny_world, ckpt, run, ["edits.n=3"])
    assert res.returncode == 0, res.stderr[-3000:]
    recs = _records(run)
    assert [r["case_id"] for r in recs] == [c["case_id"] for c in tiny_world.cases[:3]]
    for r, c in zip(recs, tiny_world.cases, strict=False):
        assert len(r["pre"]["p"]) == len(r["post"]["p"]) == len(c["probes"])
        assert set(r["post"]["gen"]) == {"s1r1", "s1r2", "s2r1", "s2r2"}
        assert r["time_s"] > 0 and r["peak_mem_mb"] > 0 and {"agree", "acc", "kl"} <= set(r["locality"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["summary"]["subsets"]["all"]["n"] == 3
    # the default gate edits every request, and says so in each record and in metrics.json
    assert all(r["edited"] for r in recs) and metrics["skip_correct"] is False and metrics["edited_share"] == 1.0
    assert not (run / "results.jsonl.partial").exists()
    # a finished run with the same config is reused, not redone
    again = _cli(tiny_world, ckpt, run, ["edits.n=3"])
    assert again.returncode == 0 and "finished earlier" in again.stdout


def _wait_for_checkpoint(proc: subprocess.Popen, path: Path, timeout: float = 300) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def test_killed_sequential_stream_resumes_with_the_same_final_metrics(tiny_world, ckpt, tmp_path):
    args = ["edits.mode=sequential", "edits.n=24", "edits.eval_every=8", "edits.ckpt_every=2"]
    full = tmp_path / "full"
    assert _cli(tiny_world, ckpt, full, args).returncode == 0
    killed = tmp_path / "killed"
    proc = _cli(tiny_world, ckpt, killed, args, popen=True)
    _wait_for_checkpoint(proc, killed / "checkpoints" / "last.ckpt")
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.jsonl").exists(), "the run must be killed before it completes"
    assert 0 < len((killed / "results.jsonl.partial").read_text().splitlines()) < 24
    res = _cli(tiny_world, ckpt, killed, args)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _records(full), _records(killed)
    strip = lambda r: {k: v for k, v in r.items() if k not in ("time_s", "peak_mem_mb")}  # noqa: E731
    assert [strip(r) for r in a] == [strip(r) for r in b]
    ma, mb = (json.loads((d / "metrics.json").read_text())["summary"] for d in (full, killed))
    assert ma == mb
    curve_a = (full / "curve.jsonl").read_text()
    assert curve_a == (killed / "curve.jsonl").read_text() and len(curve_a.splitlines()) == 3
    # the final model's locality is in the summary (the curve's last point), so a sweep's objective is defined
    last = json.loads(curve_a.splitlines()[-1])
    assert ma["subsets"]["all"]["final/locality_agree"] == last["locality_agree"]
    from editlab.eval.objectives import Objective

    assert math.isfinite(Objective("success_at_locality")(ma))
    assert torch.equal(_weights(full / "model"), _weights(killed / "model"))  # the final edited model, bit for bit


def _weights(d: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    w = load_file(str(d / "model.safetensors"))
    return torch.cat([w[k].flatten() for k in sorted(w)])


def test_agent_stream_equals_edits_applied_one_by_one(tiny_world):
    """The accumulated agent of sequential mode (and its replay after a resume) is the one-by-one chain."""
    ids = tiny_world.ids()
    cases = tiny_world.cases[:12]
    stream = AgentStream.from_world(World(tiny_world.dir), "n_prime")
    assert stream.target == tiny_world.cfg.agent.target  # data.agent.target of the world, not a default
    agent, edited = tiny_world.agent, set()
    for case in cases:
        stream.add(case)
        i = case["ids"]
        w, _ = agent.n_prime(i["subject"], i["relation"], i["requested_object"], tiny_world.cfg.agent.target)
        agent = agent.edit(i["subject"], i["relation"], i["requested_object"], w)
        edited.add((i["subject"], i["relation"]))
        for c in cases:
            np.testing.assert_allclose(stream.gold(c), case_gold(agent, ids, c, edited), rtol=0, atol=1e-12)
    replayed = AgentStream.from_world(World(tiny_world.dir), "n_prime")
    replayed.replay(stream.applied)
    for c in cases:
        assert replayed.gold(c) == stream.gold(c)
    # the first edit's gold is the case's own single-edit p_post
    first = AgentStream.from_world(World(tiny_world.dir), "case")
    first.add(cases[0])
    np.testing.assert_allclose(first.gold(cases[0]), [p["p_post"] for p in cases[0]["probes"]], atol=1e-12)


@pytest.mark.parametrize(("extra", "needle"), [
    (["method=lorra"], "did you mean lora"),
    (["edits.n=100000"], "edits.n=100000"),
    (["edits.mode=stream"], "edits.mode=stream"),
    (["edits.n=0"], "edits.n=0"),
    (["edits.batch_size=4"], "edits.mode=batch"),
    (["metrics.protocol=fuzzy"], "metrics.protocol"),
])
def test_bad_input_one_line(tiny_world, ckpt, tmp_path, extra, needle):
    run = tmp_path / "bad"
    res = _cli(tiny_world, ckpt, run, extra)
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], \
        res.stderr[-3000:]
    assert not (run / "results.jsonl").exists()


def test_bad_checkpoints(tiny_world, ckpt, tmp_path):
    import shutil

    missing = _cli(tiny_world, tmp_path / "nope", tmp_path / "r1", [])
    assert missing.returncode == 2 and "python train.py" in missing.stderr
    other = tmp_path / "other"
    shutil.copytree(ckpt, other)
    info = json.loads((other / "editlab.json").read_text())
    (other / "editlab.json").write_text(json.dumps({**info, "world_hash": "0123456789ab"}))
    res = _cli(tiny_world, other, tmp_path / "r2", [])
    assert res.returncode == 2 and "0123456789ab" in res.stderr and not (tmp_path / "r2").exists()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(ckpt, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    res = _cli(tiny_world, corrupt, tmp_path / "r3", [])
    assert res.returncode == 2 and res.stderr.startswith("error: cannot load weights"), res.stderr[-2000:]


def test_malformed_case_file(tiny_world, ckpt, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(tiny_world.dir, cache / tiny_world.dir.name)
    path = cache / tiny_world.dir.name / "cases.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:50], *lines[2:]]) + "\n")
    cmd_ckpt = tmp_path / "ck"
    shutil.copytree(ckpt, cmd_ckpt)
    res = subprocess.run([sys.executable, "edit.py", f"data.cache_dir={cache}", f"checkpoint={cmd_ckpt}",
                          f"run_dir={tmp_path / 'r'}", *FAST], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "cases.jsonl:2" in res.stderr, res.stderr[-2000:]


def test_batched_sequential_gold_holds_the_whole_batch(tiny_world, ckpt, tmp_path):
    """A batch is applied to the model at once, so every case's gold comes from the agent holding the whole batch."""
    run = tmp_path / "seqbatch"
    res = _cli(tiny_world, ckpt, run, ["edits.mode=sequential", "edits.n=4", "edits.batch_size=2", "edits.eval_every=2",
                                       "edits.weight=case"])
    assert res.returncode == 0, res.stderr[-3000:]
    ids, cases = tiny_world.ids(), tiny_world.cases[:4]
    agent, edited = tiny_world.agent, []
    for rec_pair, pair in ((_records(run)[:2], cases[:2]), (_records(run)[2:], cases[2:])):
        for c in pair:
            i = c["ids"]
            agent = agent.edit(i["subject"], i["relation"], i["requested_object"], c["edit_weight"])
            edited.append((i["subject"], i["relation"]))
        for rec, c in zip(rec_pair, pair, strict=True):
            assert rec["gold_agent"] == "stream"
            np.testing.assert_allclose(rec["gold_post"], case_gold(agent, ids, c, edited), rtol=0, atol=1e-12)
            assert rec["target_post"] == _agent_targets(agent, ids, c, {e: cases[k]["ids"]["requested_object"]
                                                                          for k, e in enumerate(edited)})
    # the final model is scored against the agent holding all four edits: its probabilities and its argmax targets
    requested = {(c["ids"]["subject"], c["ids"]["relation"]): c["ids"]["requested_object"] for c in cases}
    for rec, c in zip(_records(run), cases, strict=True):
        np.testing.assert_allclose(rec["gold_final"], case_gold(agent, ids, c, edited), rtol=0, atol=1e-12)
        assert rec["target_final"] == _agent_targets(agent, ids, c, requested)


def _agent_targets(agent, ids, case: dict, requested: dict) -> dict[str, str]:
    """Per atomic kind: the requested object of an edited fact, else the agent's argmax (by hand)."""
    names = {i: n for n, i in ids[2].items()}
    out = {}
    for pr in case["probes"]:
        if pr["kind"] in ("s1r1", "s1r2", "s2r1", "s2r2") and pr["kind"] not in out:
            s, r = ids[0][pr["subject"]], ids[1][pr["relation"]]
            out[pr["kind"]] = names[requested.get((s, r), agent.argmax(s, r))]
    return out


def test_batch_golds_hold_the_whole_batch(tiny_world, ckpt, tmp_path):
    """Batch mode: each record is scored against the agent holding every request of its batch (and only those)."""
    run = tmp_path / "batch"
    res = _cli(tiny_world, ckpt, run, ["edits.mode=batch", "edits.n=6", "edits.batch_size=3"])
    assert res.returncode == 0, res.stderr[-3000:]
    ids, cases, recs = tiny_world.ids(), tiny_world.cases[:6], _records(run)
    names = {i: n for n, i in ids[2].items()}
    for b in (0, 3):
        agent, edited = tiny_world.agent, {}
        for c in cases[b : b + 3]:
            i = c["ids"]
            agent = agent.edit(i["subject"], i["relation"], i["requested_object"], c["edit_weight"])
            edited[(i["subject"], i["relation"])] = i["requested_object"]
        for rec, c in zip(recs[b : b + 3], cases[b : b + 3], strict=True):
            assert rec["gold_agent"] == "batch"
            np.testing.assert_allclose(rec["gold_post"], case_gold(agent, ids, c, edited), rtol=0, atol=1e-12)
            for pr in c["probes"]:
                if pr["kind"] in rec["target_post"]:
                    s, r = ids[0][pr["subject"]], ids[1][pr["relation"]]
                    want = edited.get((s, r), agent.argmax(s, r))
                    assert rec["target_post"][pr["kind"]] == names[want]
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    assert summary["gold_agent"] == "batch"


def test_batch_of_one_equals_single_bit_for_bit(tiny_world, ckpt, tmp_path):
    """A batch of one is scored against the agent holding that one edit: the case's own single-edit golds."""
    single, batch = tmp_path / "single", tmp_path / "batch1"
    assert _cli(tiny_world, ckpt, single, ["edits.n=4"]).returncode == 0
    res = _cli(tiny_world, ckpt, batch, ["edits.n=4", "edits.mode=batch", "edits.batch_size=1"])
    assert res.returncode == 0, res.stderr[-3000:]
    moving = ("time_s", "peak_mem_mb", "mode", "gold_agent", "gold_post", "target_post", "downstream_changes")
    for a, b, c in zip(_records(single), _records(batch), tiny_world.cases, strict=False):
        assert a["gold_agent"] == "single" and "gold_post" not in a and b["gold_agent"] == "batch"
        assert {k: v for k, v in a.items() if k not in moving} == {k: v for k, v in b.items() if k not in moving}
        assert b["gold_post"] == [p["p_post"] for p in c["probes"]]  # exactly, not approximately
        assert b["target_post"] == {p["kind"]: p["object"] for p in c["probes"] if p.get("target") in
                                    ("requested", "new_argmax") and not (p["kind"] == "s1r1" and
                                                                         p["target"] == "new_argmax")}
        assert b["downstream_changes"] == c["downstream_changes"]
    sa, sb = (json.loads((d / "metrics.json").read_text())["summary"] for d in (single, batch))
    assert sa["gold_agent"] == "single" and sb["gold_agent"] == "batch"
    assert sa["subsets"] == sb["subsets"]


def test_agent_stream_takes_its_target_from_the_world_config(tiny_world):
    """n' is computed for data.agent.target as the world recorded it (here changed to 0.8), not a default."""
    from types import SimpleNamespace

    ids = tiny_world.ids()
    world = SimpleNamespace(info={"config": {"agent": {"target": 0.8}}}, agent=tiny_world.agent, subject_id=ids[0],
                            relation_id=ids[1], object_id=ids[2])
    stream = AgentStream.from_world(world, "n_prime")
    weights = []
    for case in tiny_world.cases[:20]:
        i = case["ids"]
        want = tiny_world.agent.n_prime(i["subject"], i["relation"], i["requested_object"], 0.8)[0]
        assert stream.weight(case) == want
        weights.append(want != tiny_world.agent.n_prime(i["subject"], i["relation"], i["requested_object"], 0.95)[0])
    assert any(weights)  # the target matters for these cases, so the test would see a hard-coded 0.95
