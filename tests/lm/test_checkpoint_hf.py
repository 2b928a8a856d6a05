"""An exported checkpoint read with plain transformers (``AutoTokenizer`` + ``AutoModelForCausalLM``) scores a
prompt exactly as editlab does, and its files are written with the user's umask."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from editlab.eval.scoring import encode_pairs, object_logprobs
from editlab.vocab import case_prompt


def _plain_hf_logprobs(directory, tok_dir, prompts: list[str], objects: list[str]) -> torch.Tensor:
    """log p(" " + object | prompt) the way a transformers user computes it: the tokenizer's own framing."""
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    model = AutoModelForCausalLM.from_pretrained(str(directory)).eval()
    out = []
    for p, o in zip(prompts, objects, strict=True):
        ids = tok(f"{p} {o}", return_tensors="pt")["input_ids"]
        n = len(tok(f" {o}", add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        out.append(sum(logp[ids.shape[1] - n - 1 + k, ids[0, ids.shape[1] - n + k]] for k in range(n)))
    return torch.stack(out)


def test_plain_transformers_scores_prompts_as_editlab_does(tiny_world, random_checkpoint):
    cases = tiny_world.cases[:12]
    prompts, objects = [case_prompt(c) for c in cases], [c["requested_object"] for c in cases]
    tok = PreTrainedTokenizerFast.from_pretrained(str(tiny_world.dir))
    model = AutoModelForCausalLM.from_pretrained(str(random_checkpoint)).eval()
    ours = object_logprobs(model, *encode_pairs(tok, prompts, objects), tok.pad_token_id)
    plain = _plain_hf_logprobs(random_checkpoint, random_checkpoint, prompts, objects)
    torch.testing.assert_close(plain, ours, rtol=0, atol=1e-5)
    # the world's own tokenizer (no BOS post-processor) is what the export must not hand out: it scores otherwise
    unframed = _plain_hf_logprobs(random_checkpoint, tiny_world.dir, prompts, objects)
    assert (unframed - ours).abs().max() > 1e-3


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_checkpoint_files_follow_the_umask(random_checkpoint):
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in random_checkpoint.iterdir() if p.is_file()}
    assert "model.safetensors" in modes
    assert set(modes.values()) == {0o666 & ~mask}, modes
