"""The one error and signal wrapper of every entry point (train.py, edit.py, evaluate.py, ``-m editlab.world``).

- :class:`~editlab.errors.EditlabError` (bad input the user can fix): ``error: <one line>``, exit 2.
- an OmegaConf interpolation error caused by an :class:`~editlab.errors.EditlabError` (a resolver such as
  ``${editlab.traced_layer:...}`` refusing its input while the entry point resolves its config): that
  error's one line, exit 2; OmegaConf would otherwise wrap it in a traceback.
- a mandatory value left unset (``???``, e.g. ``model.path`` of ``model=hf``): ``error: <key> has no value``, exit 2.
- a ``+key=value`` override that adds a top-level key: no code reads it, so it is a typo; refused (exit 2)
  before anything runs. Additions inside a node (``+method.hparams.x=...``) are checked by that node's
  validation (unknown keys named there).
- :class:`~editlab.utils.signals.Interrupted` (SIGTERM / SIGINT): ``interrupted: ...`` with how to
  resume, exit 143 / 130, so ``make`` and shell pipelines stop instead of carrying on.

- an :class:`OSError` with a file name (a directory that cannot be written, a full disk): ``error: cannot use
  <file>: ...`` naming the file and the settings that move it, exit 2.
- anything else is a bug: one line on the console naming the log file that holds the traceback
  (``<outputs>/logs/``, else the temporary directory), exit 1.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from editlab.errors import EditlabError
from editlab.utils.quiet import silence_third_party
from editlab.utils.signals import Interrupted, graceful_stop

T = TypeVar("T")


def run_cli(fn: Callable[[], T], resume_hint: str = "re-run the same command to resume") -> T:
    """Call ``fn()`` under :func:`~editlab.utils.signals.graceful_stop`; map user errors and signals to exits."""
    silence_third_party()
    try:
        refuse_added_top_level_keys()
        with graceful_stop():
            return fn()
    except EditlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", None) or str(exc).rsplit(":", 1)[-1].strip()
        print(f"error: {key} has no value (??? in its config); set it on the command line: {key}=...", file=sys.stderr)
        sys.exit(2)
    except InterpolationResolutionError as exc:
        cause = _editlab_cause(exc)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as exc:
        print(f"interrupted ({exc}); {resume_hint}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.filename is None:
            _crash(exc)
        if isinstance(exc, FileNotFoundError) and Path(exc.filename).parent.is_dir():
            # a file missing in a folder that exists: something expected it there (the folder is writable or not)
            print(f"error: no file {exc.filename}; the command that writes it has not finished there, or the path "
                  "is wrong", file=sys.stderr)
        else:
            print(f"error: cannot use {exc.filename}: {exc.strerror or exc}; choose a location you can write "
                  "(EDITLAB_OUTPUTS=..., EDITLAB_CACHE=... or run_dir=...)", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        _crash(exc)


def _crash(exc: BaseException) -> None:
    """Write the traceback of an unexpected error to a log file; one line on the console; exit 1."""
    text = "".join(traceback.format_exception(exc))
    name = f"{Path(sys.argv[0]).stem or 'editlab'}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (Path(os.environ.get("EDITLAB_OUTPUTS", "outputs")) / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(f"{' '.join(sys.argv)}\n\n{text}")
            where = f"the traceback is in {folder / name}"
            break
        except OSError:
            continue
    else:
        where = "no log file could be written"
    first = str(exc).splitlines()[0] if str(exc) else ""
    print(f"error: unexpected {type(exc).__name__}: {first} ({where}; please report it with that file)",
          file=sys.stderr)
    sys.exit(1)


def check_launcher(argv: list[str]) -> None:
    """``hydra/launcher=slurm`` on a machine without SLURM is one line before Hydra starts (submitit would raise
    "Could not detect srun" from inside the launcher, outside any entry point's error handling)."""
    import shutil

    if any(a.replace(" ", "") in ("hydra/launcher=slurm", "hydra/launcher=submitit_slurm") for a in argv) and (
            shutil.which("sbatch") is None or shutil.which("srun") is None):
        raise EditlabError("hydra/launcher=slurm submits jobs with SLURM's sbatch and srun, which are not on the "
                           "PATH here: run the command on the cluster's login node, or use "
                           "hydra/launcher=joblib (parallel jobs here) or hydra/launcher=local")


def refuse_added_top_level_keys() -> None:
    """Raise for a ``+key=value`` command-line override of a new top-level key (inside a Hydra app; else nothing)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    for override in HydraConfig.get().overrides.task:
        key = override[1:].split("=", 1)[0]
        if override.startswith("+") and not override.startswith("++") and not any(c in key for c in "./@"):
            raise EditlabError(f"{override} adds a key that nothing reads (a typo?); drop it, or set an existing key "
                               "without the + (python <script>.py --cfg job lists them)")


def _editlab_cause(exc: BaseException) -> EditlabError | None:
    """The :class:`EditlabError` an exception was raised from or during (OmegaConf chains its resolver errors)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, EditlabError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None
