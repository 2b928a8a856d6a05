"""Self-describing checkpoint directories (architecture.md, "Contracts").

A checkpoint directory holds Hugging Face ``save_pretrained`` weights (safetensors), the world's
tokenizer files, the resolved run config (``run_config.yaml``) and ``editlab.json`` (world hash,
metrics, provenance). ``AutoModelForCausalLM.from_pretrained(dir)`` and
``AutoTokenizer.from_pretrained(dir)`` load it. Written atomically; loading never unpickles.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, PreTrainedModel

from editlab.errors import EditlabError
from editlab.utils.atomic import atomic_directory

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
INFO = "editlab.json"


def export_checkpoint(model: PreTrainedModel, world_dir: Path, out: Path, run_config: dict, world_hash: str,
                      metrics: dict) -> Path:
    """Write the checkpoint directory ``out`` (replacing an older one only once the new one is complete)."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    with atomic_directory(out, world_hash) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for name in TOKENIZER_FILES:
            shutil.copy2(Path(world_dir) / name, tmp / name)
        (tmp / "run_config.yaml").write_text(yaml.safe_dump(run_config, sort_keys=True))
        info = {"world_hash": world_hash, "world_dir": str(world_dir), "metrics": metrics,
                "format": "editlab-checkpoint-1"}
        (tmp / INFO).write_text(json.dumps(info, indent=1, sort_keys=True))
    return out


def checkpoint_info(directory: Path) -> dict:
    """``editlab.json`` of a checkpoint directory, with a clear error if it is not one."""
    path = Path(directory) / INFO
    if not path.is_file():
        raise EditlabError(f"{directory} is not an editlab checkpoint (no {INFO}); point to a train.py export")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EditlabError(f"corrupt {path}: {exc}; re-export the checkpoint") from None


def load_checkpoint(directory: Path, world_hash: str | None = None) -> PreTrainedModel:
    """Load an exported model (safetensors only), optionally checking it belongs to ``world_hash``."""
    info = checkpoint_info(directory)
    if world_hash is not None and info["world_hash"] != world_hash:
        raise EditlabError(
            f"checkpoint {directory} was trained on world {info['world_hash']}, not {world_hash}; "
            "use a checkpoint of this world or the matching data preset"
        )
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
