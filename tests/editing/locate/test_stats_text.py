"""Covariance statistics from a text dataset on disk (``stats.dataset=``): the second moment over the model's own
tokenisation of the rows in the seeded order, the same from JSON Lines, Parquet and a save_to_disk folder, cached
under a key of the file's bytes, and one clear error per bad dataset."""

from __future__ import annotations

import json
import re

import datasets
import numpy as np
import pytest
import torch

from editlab.editing.base import EditContext
from editlab.editing.locate import stats
from editlab.errors import EditlabError

NAME = "model.layers.1.mlp.down_proj"


def _texts(lm, n: int = 9) -> list[str]:
    return [f"{c['subject']} {c['relation']} {c['requested_object']}. {c['subject']} is here." * (1 + i % 3)
            for i, c in enumerate(lm.world.cases[:n])]


def _direct(model, tok, texts: list[str]) -> tuple[torch.Tensor, int]:
    order = np.random.default_rng(0).permutation(len(texts))
    keys: list[torch.Tensor] = []
    handle = model.get_submodule(NAME).register_forward_hook(lambda _m, a, _o: keys.append(a[0][0]))
    try:
        with torch.no_grad():
            for i in order:
                model(input_ids=torch.tensor([tok(texts[i])["input_ids"][: stats.MAX_LEN]]), use_cache=False)
    finally:
        handle.remove()
    k = torch.cat(keys).double()
    return k.T @ k / len(k), len(k)


def test_text_statistics_are_the_second_moment_of_its_tokens(tiny_lm, tmp_path, monkeypatch):
    model, tok = tiny_lm.model, tiny_lm.tok
    texts = _texts(tiny_lm)
    monkeypatch.setattr(stats, "BATCH_DOCS", 4)  # padded batches, the last one short
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    datasets.Dataset.from_dict({"text": texts}).to_parquet(str(tmp_path / "a.parquet"))
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "saved"))
    direct, n = _direct(model, tok, texts)
    for source in ("a.jsonl", "a.parquet", "saved"):
        got = stats.compute(model, [NAME], None, n, progress=False, text=tmp_path / source, tokenizer=tok)[NAME]
        assert float((got - direct).abs().max()) < 1e-5 * float(direct.abs().max()), source
    world = stats.compute(model, [NAME], tiny_lm.world.dir, n, progress=False)[NAME]
    assert float((world - direct).abs().max()) > 1e-3 * float(direct.abs().max())  # another source, another C
    with pytest.raises(EditlabError, match=f"fewer than stats_tokens={n + 1} tokens"):
        stats.compute(model, [NAME], None, n + 1, progress=False, text=tmp_path / "a.jsonl", tokenizer=tok)


def test_text_statistics_are_cached_by_the_file_s_bytes(tiny_lm, tmp_path):
    data = tmp_path / "a.jsonl"
    data.write_text(json.dumps({"text": "one two"}) + "\n")
    ctx = EditContext(tokenizer=tiny_lm.tok, cache_dir=tmp_path / "cache", model_id="m")
    on_text = EditContext(tokenizer=tiny_lm.tok, cache_dir=tmp_path / "cache", model_id="m", stats_text=data)
    a, b = stats.cache_path(ctx, NAME, 10), stats.cache_path(on_text, NAME, 10)
    assert a.name == f"{NAME}.n10.safetensors" and b.name.startswith(f"{NAME}.text-") and a != b
    data.write_text(json.dumps({"text": "one three"}) + "\n")
    assert stats.cache_path(on_text, NAME, 10) != b


@pytest.mark.parametrize(("name", "content", "message"), [
    ("missing.jsonl", None, "no text dataset at"),
    ("a.jsonl", {"body": "x"}, "has no 'text' column (columns: body)"),
    ("a.csv", {"text": "x"}, "use a .jsonl, .json, .parquet, .arrow file"),
])
def test_a_bad_text_dataset_is_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(json.dumps(content) + "\n")
    with pytest.raises(EditlabError, match=re.escape(message)):
        stats.read_text_dataset(path)
