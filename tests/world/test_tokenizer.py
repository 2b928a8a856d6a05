"""Tokenizer and tokenized corpus (world.md section 4)."""

from __future__ import annotations

import json

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from editlab.world.tokenizer import load_tokens


def test_loads_with_transformers(tiny_world):
    tok = PreTrainedTokenizerFast.from_pretrained(str(tiny_world.dir))
    auto = AutoTokenizer.from_pretrained(str(tiny_world.dir))
    assert len(tok) == tiny_world.cfg.tokenizer.vocab_size
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert (auto.bos_token, auto.eos_token) == ("<s>", "</s>")
    text = tiny_world.cases[0]["probes"][0]["prompt"]
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_prompt_and_object_tokenise_like_the_sentence(tiny_world):
    """The scoring core tokenises "s r" and " o" separately; that must equal the corpus sentence."""
    tok = PreTrainedTokenizerFast.from_pretrained(str(tiny_world.dir))
    for c in tiny_world.cases[:100]:
        for p in c["probes"]:
            if "object" in p:
                a = tok(p["prompt"], add_special_tokens=False)["input_ids"]
                b = tok(" " + p["object"], add_special_tokens=False)["input_ids"]
                assert a + b == tok(f'{p["prompt"]} {p["object"]}', add_special_tokens=False)["input_ids"]


def test_memmap_matches_corpus(tiny_world):
    tokens, offsets, meta = load_tokens(tiny_world.dir)
    tok = PreTrainedTokenizerFast.from_pretrained(str(tiny_world.dir))
    docs = [json.loads(x)["text"] for x in (tiny_world.dir / "corpus.jsonl").read_text().splitlines()]
    assert meta["n_docs"] == len(docs) == len(offsets) - 1
    assert meta["n_tokens"] == int(offsets[-1]) == len(tokens) == tiny_world.stats["tokens"]
    assert tokens.dtype == np.uint16
    for d in np.random.default_rng(0).choice(len(docs), 300, replace=False).tolist():
        ids = tokens[offsets[d] : offsets[d + 1]].tolist()
        assert ids == tok(docs[d], add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == docs[d]
    assert 0 not in set(tokens[:100000].tolist())  # no padding, no specials inside documents


def test_sentence_assembly_equals_direct_encoding_with_unsafe_joins(tmp_path):
    """Names from real data may end in punctuation ("Inc.", ")"): those joins must not be assembled."""
    from editlab.world.tokenizer import tokenize_documents, train_tokenizer

    texts = ["Ada Lovelace occupation Acme Inc.", "Bob Stone country Land (Q1)", '"Cy Ray sport Go" is true',
             "Dee Fox member of sports team FC 99", '"not Ada Lovelace sport Go" is false', "x y z"]
    docs = [[0, 1, 2], [2, 3], [1, 0], [4, 5, 3, 2], [5], [3, 4, 0]]
    tok = train_tokenizer(iter(texts * 20), len(texts) * 20, 300)
    ptr = np.r_[0, np.cumsum([len(d) for d in docs])]
    ids = np.concatenate([np.asarray(d) for d in docs])
    meta = tokenize_documents(tok, texts, ptr, ids, tmp_path, chunk_docs=4)
    tokens, offsets, _ = load_tokens(tmp_path)
    for d, doc in enumerate(docs):
        want = tok.encode(". ".join(texts[i] for i in doc), add_special_tokens=False).ids
        assert tokens[offsets[d] : offsets[d + 1]].tolist() == want
    assert meta["n_tokens"] == len(tokens)
