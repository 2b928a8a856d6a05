"""World build: determinism across processes, caching, atomicity, errors with one clear line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from editlab.errors import EditlabError
from editlab.world.build import build_world
from editlab.world.config import world_config
from tests.conftest import data_config

ROOT = Path(__file__).resolve().parents[2]


def _cli(args: list[str], cache: Path, hashseed: str = "0", **kw) -> subprocess.CompletedProcess | subprocess.Popen:
    env = {**os.environ, "EDITLAB_CACHE": str(cache), "PYTHONHASHSEED": hashseed}
    cmd = [sys.executable, "-m", "editlab.world", *args]
    if kw.get("popen"):
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_two_processes_with_different_hash_seeds_are_byte_identical(tiny_world, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    pa = _cli(["progress=false"], a, "1", popen=True)
    pb = _cli(["progress=false"], b, "2", popen=True)
    assert pa.wait(timeout=300) == 0 and pb.wait(timeout=300) == 0
    (da,), (db,) = list((a / "worlds").iterdir()), list((b / "worlds").iterdir())
    fa, fb = _files(da), _files(db)
    assert "tokenizer.json" in fa and "tokens.bin" in fa and "cases.jsonl" in fa
    assert fa == fb
    # ... and identical to the in-process fixture build of the same config
    assert _files(tiny_world.dir) == fa


def test_cache_is_reused(tiny_world):
    report = build_world(tiny_world.cfg, tiny_world.dir.parent, progress=False)
    assert not report.built and report.directory == tiny_world.dir


def test_config_change_changes_the_directory(tiny_world):
    other = world_config(data_config(["data.seed=1"]))
    from editlab.world.build import world_dir

    assert world_dir(other, tiny_world.dir.parent) != tiny_world.dir


def test_killed_build_is_rebuilt_cleanly(tiny_world, tmp_path):
    proc = _cli(["progress=false"], tmp_path, popen=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "worlds").glob(".tmp-*/tokens.bin")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    worlds = tmp_path / "worlds"
    assert [p.name for p in worlds.iterdir() if not p.name.startswith(".tmp-")] == []  # nothing trusted
    report = build_world(tiny_world.cfg, worlds, progress=False)
    assert report.built
    assert [p.name for p in worlds.iterdir()] == [report.directory.name]  # the stale temp dir is gone
    assert _files(report.directory) == _files(tiny_world.dir)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["data.kg.source=wikidata"], "unknown KG source 'wikidata' (did you mean 'wikidata5m'?)"),
        (["data/kg=wikidata5m", "data.kg.path=/nonexistent/wd5m"], "/nonexistent/wd5m"),
        (["data.generative.mgtp=0.5"], "mgtp=0.5 must lie in (0.5, 1]"),
        (["data.generative.mgtp=1.01"], "mgtp=1.01 must lie in (0.5, 1]"),
        (["data.corpus.n_samples=0"], "n_samples=0 must be >= 1"),
        (["data.cases.n_cases=100000"], "n_cases=100000 but the eval split holds only"),
        (["+data.bogus=1"], "unknown key(s) ['bogus'] in data"),
    ],
)
def test_bad_input_gives_one_line_and_no_world(tmp_path, args, needle):
    res = _cli(["progress=false", *args], tmp_path)
    assert res.returncode == 2, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    worlds = tmp_path / "worlds"
    assert not worlds.exists() or list(worlds.iterdir()) == []


def test_malformed_triples_file_names_file_and_line(tmp_path):
    bad = tmp_path / "kg.tsv"
    bad.write_text("a\tr1\tb\nc\tr2\n")
    res = _cli(["progress=false", "data/kg=triples", f"data.kg.path={bad}"], tmp_path)
    assert res.returncode == 2
    assert str(bad) in res.stderr and "line 2" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_library_raises_editlab_error():
    with pytest.raises(EditlabError, match="mgtp"):
        world_config(data_config(["data.generative.mgtp=2"]))


def test_a_script_that_needs_the_world_builds_it_saying_so(tmp_path, capsys):
    """train.py opens its world with build=True: an absent world is built (one line), not an error."""
    from editlab.world.loading import World

    data = data_config()
    with pytest.raises(EditlabError, match=r"python -m editlab\.world data=wikidata_synth_tiny"):
        World.from_config(data, tmp_path)
    world = World.from_config(data, tmp_path, build=True)
    err = capsys.readouterr().err
    assert err.startswith("building world wikidata_synth_tiny first (not built yet; about 5 s)")
    assert err.count("\n") == 1
    assert world.info["hash"] and World.from_config(data, tmp_path).dir == world.dir
    World.from_config(data, tmp_path, build=True)
    assert capsys.readouterr().err == ""  # built once, then reused silently
