"""bench/gpu_check.py: refuses to pretend on a machine without CUDA; --smoke runs every step on the CPU (slow)."""

from __future__ import annotations

import json

import pytest
import torch

from editlab.errors import EditlabError
from tests.conftest import load_bench


def _check():
    return load_bench("gpu_check")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_without_cuda_it_says_so_and_offers_the_smoke_run(tmp_path):
    with pytest.raises(EditlabError, match=r"no CUDA GPU here; .* --smoke"):
        _check().main(["--out", str(tmp_path)])


@pytest.mark.slow
def test_smoke_runs_every_step_and_writes_one_json(tmp_path):
    out = _check().main(["--smoke", "--steps", "4", "--edits", "2", "--editor-steps", "2", "--out", str(tmp_path)])
    assert out["pretrain"]["steps"] == 4 and out["pretrain"]["tokens_per_s"] > 0
    assert set(out["edit"]) == {"lora", "rome", "memit", "mend"} and all(e["n"] == 2 for e in out["edit"].values())
    assert {m: r["exit"] for m, r in out["hf_edit"]["methods"].items()} == {"rome": 0, "memit": 0, "lora": 0}
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == json.loads(json.dumps(out))
