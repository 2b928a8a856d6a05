"""Self-describing checkpoint directories (architecture.md, "Contracts").

A checkpoint directory holds Hugging Face ``save_pretrained`` weights (safetensors), the world's
tokenizer files, the resolved run config (``run_config.yaml``) and ``editlab.json`` (world hash,
``model_id``, metrics, provenance). ``AutoModelForCausalLM.from_pretrained(dir)`` and
``AutoTokenizer.from_pretrained(dir)`` load it. Written atomically; loading never unpickles.

``model_id`` names the trained model: a hash of the world hash, the model config node and the training
seed. Statistics caches (ROME/MEMIT covariances) and trained editors are keyed by it, so two seeds of one
preset never share a cache. An edited model (a sequential run's export) carries the method that made it
(editlab.runs.export writes it through ``extra_info`` / ``write_extra``); this module knows no method.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from tokenizers import Tokenizer, processors
from transformers import AutoModelForCausalLM, PreTrainedModel

from editlab.errors import EditlabError
from editlab.utils.atomic import MARKER, atomic_directory
from editlab.utils.jsonio import read_json

INFO = "editlab.json"


def compute_model_id(world_hash: str, model_config: dict | None, seed: int | None) -> str:
    """The identity of a trained model: 16 hex digits of SHA-256 over (world hash, model config, seed)."""
    key = json.dumps({"world_hash": world_hash, "model": model_config or {}, "seed": seed}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def weights_digest(model: torch.nn.Module) -> str:
    """16 hex digits of SHA-256 over every tensor of the state dict (name, dtype, shape, bytes, in name order).

    ``model_id`` names a model by its recipe (world, config, seed); this names it by its weights, so two runs of
    one recipe on different machines or library versions show whether they trained bit-identical models.
    """
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous().cpu()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def export_checkpoint(model: PreTrainedModel, world_dir: Path, out: Path, run_config: dict, world_hash: str,
                      metrics: dict, *, model_id: str | None = None, extra_info: dict | None = None,
                      write_extra: Callable[[Path], None] | None = None) -> Path:
    """Write the checkpoint directory ``out`` (replacing an older one only once the new one is complete).

    ``model_id`` defaults to :func:`compute_model_id` of ``run_config``'s ``model`` and ``seed``;
    ``extra_info`` adds keys to ``editlab.json`` and ``write_extra(tmp_dir)`` writes more files inside the
    atomic directory (an edited model's method state).
    """
    if not isinstance(model, PreTrainedModel):
        raise EditlabError(f"cannot export a {type(model).__name__}: only Hugging Face models export here; export an "
                           "edited/wrapped model with editlab.runs.export.export_edited")
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    if model_id is None:
        model_id = compute_model_id(world_hash, run_config.get("model"), run_config.get("seed"))
    with atomic_directory(out, world_hash) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        copy_tokenizer(Path(world_dir), tmp)
        (tmp / "run_config.yaml").write_text(yaml.safe_dump(run_config, sort_keys=True))
        if write_extra is not None:
            write_extra(tmp)
        info = {"world_hash": world_hash, "world_dir": str(world_dir), "metrics": metrics, "model_id": model_id,
                "weights_sha256": weights_digest(model), "format": "editlab-checkpoint-1", **(extra_info or {})}
        (tmp / INFO).write_text(json.dumps(info, indent=1, sort_keys=True))
    return out


def copy_tokenizer(world_dir: Path, out: Path) -> None:
    """The world's tokenizer files in ``out``, with a post-processor that puts BOS before every text.

    editlab frames every prompt as ``[BOS, *ids]`` itself and calls the tokenizer with
    ``add_special_tokens=False``; the world's own tokenizer has no post-processor, so that documents are
    stored unframed. The exported copy adds BOS the same way, so plain ``AutoTokenizer`` +
    ``AutoModelForCausalLM`` score a prompt exactly as editlab does.
    """
    shutil.copy2(world_dir / "special_tokens_map.json", out / "special_tokens_map.json")
    config = json.loads((world_dir / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True}, indent=1, sort_keys=True))
    tok = Tokenizer.from_file(str(world_dir / "tokenizer.json"))
    bos = config["bos_token"]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    (out / "tokenizer.json").write_text(tok.to_str(pretty=False))


def trained_overrides(data_dir: Path) -> list[str]:
    """The ``model=<preset> [model_seed=<s>]`` overrides of every finished pretraining run under ``data_dir``
    (``<outputs>/train/<data name>``), for a "no checkpoint" error to offer what is there."""
    found = []
    for marker in sorted(Path(data_dir).glob("*-s*/model/" + MARKER)):
        name, _, seed = marker.parent.parent.name.rpartition("-s")
        if name and seed.isdigit():
            found.append(f"model={name}" + (f" model_seed={seed}" if seed != "0" else ""))
    return found


def checkpoint_info(directory: Path) -> dict:
    """``editlab.json`` of a checkpoint directory, with a clear error if it is not one."""
    path = Path(directory) / INFO
    if not path.is_file():
        raise EditlabError(f"{directory} is not an editlab checkpoint (no {INFO}); point to a train.py export")
    return read_json(path, "re-export the checkpoint", "checkpoint info")


def model_id(directory: Path) -> str:
    """The checkpoint's ``model_id`` (computed from ``run_config.yaml`` for checkpoints exported before it
    was recorded)."""
    info = checkpoint_info(directory)
    if info.get("model_id"):
        return info["model_id"]
    cfg_path = Path(directory) / "run_config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else {}
    return compute_model_id(info["world_hash"], (cfg or {}).get("model"), (cfg or {}).get("seed"))


def load_checkpoint(directory: Path, world_hash: str | None = None) -> PreTrainedModel:
    """Load an exported model (safetensors only), optionally checking it belongs to ``world_hash``.

    A checkpoint whose edits live outside the weights (a method with state: ICE's memory, a wrapper)
    is refused rather than loaded without them: load it with ``editlab.runs.export.load_edited``.
    """
    info = checkpoint_info(directory)
    if world_hash is not None and info["world_hash"] != world_hash:
        raise EditlabError(
            f"checkpoint {directory} was trained on world {info['world_hash']}, not {world_hash}; "
            "use a checkpoint of this world or the matching data preset"
        )
    if info.get("method_state"):
        raise EditlabError(f"checkpoint {directory} holds a model edited by {info['method']['name']} whose edits "
                           "live in its method state; load it with editlab.runs.export.load_edited")
    return load_weights(directory)


def load_weights(directory: Path) -> PreTrainedModel:
    """The Hugging Face weights of a checkpoint directory (safetensors only), with a clear error."""
    try:
        return AutoModelForCausalLM.from_pretrained(str(directory), use_safetensors=True)
    except (OSError, ValueError, SafetensorError) as exc:
        raise EditlabError(f"cannot load weights from {directory}: {str(exc).splitlines()[0]}") from None


def load_hf(path: str, vocab_size: int) -> PreTrainedModel:
    """A local Hugging Face causal LM for (continued) pretraining on a world: its vocabulary must be
    the world's tokenizer."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise EditlabError(f"model.path={path} is not a directory with a Hugging Face model")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise EditlabError(f"cannot load a causal LM from {p}: {str(exc).splitlines()[0]}") from None
    if model.config.vocab_size != vocab_size:
        raise EditlabError(f"model at {p} has vocab_size={model.config.vocab_size} but the world's tokenizer has "
                           f"{vocab_size}; models must share the world's tokenizer")
    return model
