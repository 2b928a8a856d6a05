"""Any Hugging Face causal LM for editing (``model=hf model.path=<dir or hub id>``), with its own tokenizer.

A model that was not trained on an editlab world is edited with the tokenizer it ships with, framed the way that
tokenizer frames text (:func:`editlab.vocab.use_own_framing`: Llama and Mistral put BOS first, GPT-2 and Qwen
nothing), in the weight precision asked for (``model.dtype``). Its identity for statistics caches is a hash of
its config and weight files (:func:`hf_model_id`), so two models never share a covariance.

Nothing is downloaded here: a hub id must already be in the local Hugging Face cache (``HF_HOME``); otherwise
the error names the download command.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from editlab.errors import EditlabError
from editlab.vocab import use_own_framing

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass(frozen=True)
class HFModel:
    """A loaded model with its own tokenizer and its identity (``hf-<sha256, 16>``)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    source: str


def _fetch_hint(path: str) -> str:
    return (f"model.path={path} is neither a local directory nor a model in the local Hugging Face cache; download "
            f"it where a network is available (hf download {path}, then set HF_HOME to that cache) or pass "
            "model.path=<a directory with config.json, weights and tokenizer files>")


def hf_model_id(directory: Path) -> str:
    """``hf-<16 hex>``: SHA-256 over the model's ``config.json`` and, per weight file, its name, size and first MiB.
    A changed model (new weights, another config) gets another id; a copy of the same files keeps it."""
    digest = hashlib.sha256()
    config = directory / "config.json"
    digest.update(config.read_bytes() if config.is_file() else b"")
    for f in sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES):
        digest.update(f"{f.name}:{f.stat().st_size}".encode())
        with open(f, "rb") as fh:
            digest.update(fh.read(1 << 20))
    return f"hf-{digest.hexdigest()[:16]}"


def resolve_hf_dir(path: str) -> Path:
    """The local directory of ``path``: itself, or the snapshot of a hub id in the local cache (never downloaded)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p.resolve()
    if p.exists() or path.count("/") > 1 or not path.strip():
        raise EditlabError(_fetch_hint(path))
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, local_files_only=True))
    except Exception:  # any miss of the offline cache is the same fix for the user
        raise EditlabError(_fetch_hint(path)) from None


def load_hf_for_editing(path: str, dtype: str = "float32") -> HFModel:
    """The causal LM at ``path`` (a directory or a cached hub id) in ``dtype`` weights, in eval mode, with its own
    tokenizer framed by :func:`~editlab.vocab.use_own_framing`; every failure is one line naming the fix."""
    if dtype not in DTYPES:
        raise EditlabError(f"model.dtype={dtype} must be one of {', '.join(DTYPES)}")
    directory = resolve_hf_dir(path)
    if not (directory / "config.json").is_file():
        raise EditlabError(f"{directory} has no config.json; model.path must be a Hugging Face model directory")
    try:
        cfg = json.loads((directory / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise EditlabError(f"{directory}/config.json is not valid JSON ({exc}); re-download the model") from None
    if cfg.get("is_encoder_decoder"):
        raise EditlabError(f"{directory} is an encoder-decoder model; editlab edits causal (decoder-only) LMs")
    try:
        tok = AutoTokenizer.from_pretrained(str(directory))
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=DTYPES[dtype])
    except (OSError, ValueError, KeyError) as exc:
        raise EditlabError(f"cannot load a causal LM and its tokenizer from {directory}: "
                           f"{str(exc).splitlines()[0]}") from None
    if not getattr(tok, "is_fast", False):
        raise EditlabError(f"the tokenizer of {directory} is not a fast tokenizer; editlab reads subject spans from "
                           "character offsets (add its tokenizer.json)")
    if len(tok) > model.get_input_embeddings().num_embeddings:
        raise EditlabError(f"the tokenizer of {directory} has {len(tok)} tokens but the model embeds "
                           f"{model.get_input_embeddings().num_embeddings}; they do not belong together")
    return HFModel(model.eval(), use_own_framing(tok), hf_model_id(directory), str(directory))
