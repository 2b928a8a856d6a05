"""Export an edited model self-describingly, and load it back with its method (architecture.md, "Contracts").

An edited model is more than its weights when the method keeps its edits outside them: ICE's memory
(the context sentences), a GRACE codebook, a SERAC memory behind a wrapper. The export therefore holds

- the *unwrapped* base weights (``save_pretrained``, safetensors: still loadable by
  ``AutoModelForCausalLM.from_pretrained``, which gives the weights without the memory);
- ``editlab.json`` with ``method: {name, hparams}`` (always, as provenance), ``base_model_id`` and
  ``method_state: true`` when there is state, in which case
- ``method_state.safetensors`` holds :meth:`EditMethod.export_state`.

:func:`load_edited` rebuilds base + method and returns ``method.load_state_dict(state, base)``, i.e. the
module that scores like the exported one (with ``method.context_prefix()`` before every probe).
``editlab.lm.checkpoint.load_checkpoint`` refuses a checkpoint with method state instead of silently
dropping it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from editlab.editing.base import EditContext, EditMethod, method_hparams_of, unwrap
from editlab.editing.registry import get_method
from editlab.errors import EditlabError
from editlab.lm.checkpoint import checkpoint_info, export_checkpoint, load_weights

METHOD_STATE = "method_state.safetensors"


def export_edited(model: nn.Module, method: EditMethod, world_dir: Path, out: Path, run_config: dict,
                  world_hash: str, metrics: dict, base_model_id: str) -> Path:
    """Export ``model`` (plain or wrapped) as edited by ``method`` to the checkpoint directory ``out``.

    Its ``model_id`` hashes the base model's id, the method and its hyper-parameters and ``run_config``
    (the edits applied), so an edited model never shares a statistics cache with its base.
    """
    state = {k: v.detach().contiguous().cpu() for k, v in method.export_state(model).items()}
    spec = {"name": method.name, "hparams": method_hparams_of(method)}
    key = json.dumps({"base": base_model_id, "method": spec, "run": run_config}, sort_keys=True, default=str)
    edited_id = hashlib.sha256(key.encode()).hexdigest()[:16]

    def write_state(tmp: Path) -> None:
        if state:
            save_file(state, str(tmp / METHOD_STATE))

    return export_checkpoint(unwrap(model), world_dir, out, run_config, world_hash, metrics, model_id=edited_id,
                             extra_info={"method": spec, "method_state": bool(state), "base_model_id": base_model_id},
                             write_extra=write_state)


def load_edited(directory: Path, world_hash: str | None = None, ctx: EditContext | None = None
                ) -> tuple[nn.Module, EditMethod | None]:
    """(model to score, method) of an exported checkpoint; ``method`` is None for a plain (pretrained) one.

    With ``ctx``, ``method.prepare(base, ctx)`` runs first (methods that need a trained editor). Score the
    model with ``method.context_prefix()`` before every probe.
    """
    info = checkpoint_info(directory)
    if world_hash is not None and info["world_hash"] != world_hash:
        raise EditlabError(f"checkpoint {directory} belongs to world {info['world_hash']}, not {world_hash}; "
                           "use a checkpoint of this world or the matching data preset")
    base = load_weights(directory).eval()
    if "method" not in info:
        return base, None
    method = get_method(info["method"]["name"], info["method"]["hparams"])
    if ctx is not None:
        method.prepare(base, ctx)
    path = Path(directory) / METHOD_STATE
    if info.get("method_state") and not path.is_file():
        raise EditlabError(f"checkpoint {directory} lacks {METHOD_STATE} that its editlab.json announces; re-export it")
    state = load_file(str(path)) if info.get("method_state") else {}
    return method.load_state_dict(state, base), method
