"""The paper-style reference scorer: hand-computed toy values, and agreement with our scoring core."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import PreTrainedTokenizerFast

from editlab.editing.base import EditRequest
from editlab.eval.probes import score_cases
from editlab.eval.reference import reference_greedy, reference_object_scores, reference_score_cases
from editlab.lm.presets import Arch, build_model
from editlab.vocab import PromptEncoder

# A bigram "LM" over 5 tokens (0 pad, 1 BOS, 2 EOS, 3, 4): row = current token, column = next token.
TABLE = torch.tensor([[0.2, 0.2, 0.2, 0.2, 0.2],
                      [0.05, 0.05, 0.1, 0.5, 0.3],   # after BOS: argmax 3
                      [0.1, 0.1, 0.1, 0.6, 0.1],     # after EOS: argmax 3 (a finished row must not show it)
                      [0.05, 0.05, 0.1, 0.2, 0.6],   # after 3: argmax 4
                      [0.05, 0.05, 0.5, 0.3, 0.1]])  # after 4: argmax EOS


class Bigram(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))  # for the device lookup

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return SimpleNamespace(logits=TABLE.log()[input_ids])


class ToyTok:
    pad_token_id, eos_token_id = 0, 2

    def decode(self, ids, skip_special_tokens=True) -> str:
        return " ".join(str(int(i)) for i in ids if int(i) > 2)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_object_scores_hand_computed(batch_size):
    # p(4 2 | 1 3) = p(4|3) p(2|4) = .6 * .5, both argmax; p(3 3 | 1) = p(3|1) p(3|3) = .5 * .2, one argmax of two
    logp, acc = reference_object_scores(Bigram(), [[1, 3], [1]], [[4, 2], [3, 3]], pad_id=0, batch_size=batch_size)
    assert logp.tolist() == pytest.approx([math.log(0.3), math.log(0.1)], abs=1e-6)
    assert acc.tolist() == [1.0, 0.5]


def test_greedy_hand_computed():
    # from [1]: 3, 4, EOS; from [1 3 3]: 4, EOS, then padding (not the 3 that follows EOS in the table)
    assert reference_greedy(Bigram(), ToyTok(), [[1], [1, 3, 3]], max_new_tokens=4) == ["3 4", "4"]
    assert reference_greedy(Bigram(), ToyTok(), [[1], [1, 3, 3]], max_new_tokens=1) == ["3", "4"]


def _model(vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(Arch(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2), vocab_size=vocab).eval()


def _log(ps) -> list[float]:
    return [math.log(x) for x in ps if x is not None]


@pytest.mark.parametrize("with_prefix", [False, True])
def test_reference_agrees_with_score_cases(tiny_world, with_prefix):
    tok = PreTrainedTokenizerFast.from_pretrained(str(tiny_world.dir))
    model = _model(len(tok))
    cases = tiny_world.cases[:6]
    prefixes = [EditRequest.from_case(c).sentence for c in cases[::-1]] if with_prefix else None
    ours = score_cases(model, PromptEncoder(tok), cases, max_new_tokens=4, prefixes=prefixes, batch_size=7)
    ref = reference_score_cases(model, tok, cases, max_new_tokens=4, prefixes=prefixes, batch_size=5)
    for o, r in zip(ours, ref, strict=True):  # a random model's probabilities are ~1e-7: compare log p
        assert _log(o.p) == pytest.approx(_log(r.p), abs=1e-4)
        assert [x is None for x in o.p_false] == [x is None for x in r.p_false]
        assert _log(o.p_false) == pytest.approx(_log(r.p_false), abs=1e-4)
        assert _log(o.req_tf) == pytest.approx(_log(r.req_tf), abs=1e-4)
        assert o.gen == r.gen and len(o.gen) == 4
        assert o.token_acc == pytest.approx(r.token_acc, abs=1e-9)
    assert len({x for c in ref for x in c.p}) > 10  # a random model gives distinct values, so the check bites


@pytest.mark.slow
def test_bench_edit_quick_prints_one_json_object():
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, str(root / "bench/edit.py"), "--quick"], capture_output=True, text=True,
                         cwd=root, timeout=1800, check=True)
    out = json.loads(run.stdout)
    assert {"bench", "device", "model", "scoring", "methods", "extrapolated"} <= set(out)
    s = out["scoring"]
    assert {"many", "one_case", "max_abs_diff_p", "gen_equal_share"} <= set(s)
    assert {"probes_per_s_ours", "probes_per_s_reference", "speedup"} <= set(s["many"]) & set(s["one_case"])
    assert s["max_abs_diff_p"] < 1e-4 and s["gen_equal_share"] == 1.0
    assert all("ms_per_edit" in v or "error" in v for v in out["methods"].values())
    x = out["extrapolated"]
    assert x["paper_protocol"]["hours"] > 0 and x["ours"]["hours"] > 0
