"""Run directories: how a run is named, found again, reused or refused. The one place for these rules.

A run directory is predictable from the config (``run_dir`` in conf/train.yaml and conf/edit.yaml), so the
same command finds its run again: a killed run resumes, a finished one is reused, and a run with a
*different* config in that directory is refused (a changed hyper-parameter must neither silently return
the old results nor overwrite them by accident). The config is compared as recorded in the directory's
``run_config.yaml``, minus the keys that do not change results (display, device, resume switches) and the
locations (``paths``, ``run_dir``: the same run is the same wherever its directory is named from); a path
under one of the ``paths`` roots is compared from that root, so moving ``EDITLAB_OUTPUTS`` or ``EDITLAB_CACHE``
keeps runs reusable and resumable.

In a Hydra multirun every job gets its own subdirectory, named from the job's overrides
(``hydra.job.override_dirname``, configured in conf/hydra/default.yaml) by the ``${editlab.job_subdir:}``
resolver, so a sweep over any key never puts two configs in one directory, and re-running the sweep
reuses each job's directory.

Files are written atomically (a temporary sibling, then a rename); JSON goes through
:mod:`editlab.utils.jsonio` (strict JSON, JSONL reading with one clear error per malformed line).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import yaml

from editlab.errors import EditlabError
from editlab.utils.jsonio import read_json, read_jsonl, write_json

__all__ = ["LOCATION_KEYS", "NON_RESULT_KEYS", "RunState", "abspath", "config_differences", "flatten", "job_subdir",
           "prepare", "read_jsonl", "read_yaml", "record_multirun_job", "register_resolvers", "traced_layer",
           "write_json", "write_yaml"]

RunState = Literal["fresh", "resume", "done"]
LOCATION_KEYS = ("paths", "run_dir")  # where things are, not what was run
# display, device, threads, logging, the number returned to a sweeper: the same results either way
NON_RESULT_KEYS = ("progress", "overwrite", "device", "logger", "threads", "objective")
JOB_SUBDIR = "editlab.job_subdir"
ABSPATH = "editlab.abspath"
TRACED_LAYER = "editlab.traced_layer"
TAG = "editlab.tag"
NAME_OF = "editlab.name_of"
_MAX_NAME = 200  # a path component must stay under the file system's 255 bytes


def job_subdir() -> str:
    """``/<override_dirname>`` of the current job in a Hydra multirun, ``""`` otherwise.

    Outside a multirun (a single run, or a config composed in a test) the run keeps its predictable path.
    A ``/`` in an override (``data/kg=triples``, a path value) becomes ``_`` so the name is one directory;
    a very long name is shortened and made unique by a hash of the full name.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return ""
    hc = HydraConfig.get()
    name = str(hc.job.override_dirname or "").replace("/", "_")
    if hc.mode != RunMode.MULTIRUN or not name:
        return ""
    if len(name.encode()) > _MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        name = f"{name.encode()[:_MAX_NAME - 13].decode(errors='ignore')}-{digest}"
    return f"/{name}"


def record_multirun_job(run_dir: Path) -> Path | None:
    """In a Hydra multirun, write ``<sweep dir>/jobs/<job number>.json`` = {run_dir, overrides}; else nothing.

    Job run directories live under ``outputs/edit/...`` (named from the config), not in Hydra's sweep
    directory; this record is how ``python evaluate.py sweep=<sweep dir>`` finds exactly the jobs of one sweep.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    record = {"run_dir": str(Path(run_dir).resolve()), "overrides": list(hc.overrides.task), "job": hc.job.num}
    return write_json(Path(hc.sweep.dir) / "jobs" / f"{hc.job.num}.json", record)


def traced_layer(path: str) -> int:
    """The layer a causal-tracing result chose: ``best_layer`` of the ``result.json`` that
    ``python evaluate.py analysis=tracing`` writes (editlab.analysis.trace_run), so a method config can say
    ``layer: ${editlab.traced_layer:outputs/analysis/<data>/<model>-s0/tracing/result.json}``.

    A relative path is taken from the working directory (Hydra does not change it). A missing or
    malformed file, or one without ``best_layer``, is one error naming the command that writes it.
    """
    fix = "run python evaluate.py analysis=tracing (it writes <out_dir>/result.json) or fix the path"
    result = read_json(Path(path), fix, "tracing result")
    if not isinstance(result, dict) or not isinstance(result.get("best_layer"), int):
        raise EditlabError(f"{path} has no integer best_layer (not a tracing result); {fix}")
    return result["best_layer"]


def tag(value: object, default: object) -> str:
    """``"-<value>"`` unless ``value`` is ``default`` (then ``""``): a run directory names a setting only when it is
    not the default, so ``${editlab.tag:${edits.target},certain}`` leaves every default run's directory as it was."""
    return "" if str(value) == str(default) else f"-{value}"


def name_of(path: object) -> str:
    """A directory-name-safe name of a model location: a directory's own name, or a hub id with ``/`` as ``--``
    (``gpt2``, ``meta-llama--Llama-3.2-1B``), so runs of two Hugging Face models never share a run directory."""
    text = str(path).rstrip("/")
    if os.path.isdir(os.path.expanduser(text)):
        text = os.path.basename(os.path.abspath(os.path.expanduser(text)))
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text.replace("/", "--")) or "model"


def abspath(path: str) -> str:
    """``path`` (``~`` expanded) made absolute from the directory the command started in: conf/paths/ makes its
    roots absolute with ``${editlab.abspath:...}``, so every location composed from them is absolute once, at
    composition, and a run records where its files are whatever directory it is read from later."""
    from hydra.utils import to_absolute_path

    return to_absolute_path(os.path.expanduser(str(path)))


def register_resolvers() -> None:
    """Register ``${editlab.job_subdir:}``, ``${editlab.abspath:<path>}``, ``${editlab.traced_layer:<result.json>}``,
    ``${editlab.tag:<value>,<default>}`` and ``${editlab.name_of:<path or hub id>}`` with OmegaConf (idempotent);
    call before Hydra resolves a config."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(ABSPATH):
        OmegaConf.register_new_resolver(ABSPATH, abspath)
    if not OmegaConf.has_resolver(JOB_SUBDIR):
        OmegaConf.register_new_resolver(JOB_SUBDIR, job_subdir)
    if not OmegaConf.has_resolver(TRACED_LAYER):
        OmegaConf.register_new_resolver(TRACED_LAYER, traced_layer)
    if not OmegaConf.has_resolver(TAG):
        OmegaConf.register_new_resolver(TAG, tag)
    if not OmegaConf.has_resolver(NAME_OF):
        OmegaConf.register_new_resolver(NAME_OF, name_of)


def read_yaml(path: Path) -> dict:
    """A YAML mapping (an empty file is ``{}``); unreadable YAML is one error naming the file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise EditlabError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}); delete it or pass overwrite=true"
                           ) from None
    return data or {}


def write_yaml(path: Path, obj: Any) -> Path:
    """Write ``obj`` as YAML (sorted keys) to ``path`` atomically (temporary sibling, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(obj, sort_keys=True))
    os.replace(tmp, path)
    return path


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"a.b.c": value}`` (the dotted keys a Hydra override names)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def under_roots(cfg: dict) -> dict:
    """``cfg`` with every path under one of its own ``paths`` roots written from that root (``${paths.outputs}/...``).

    A run recorded with ``EDITLAB_OUTPUTS`` unset (``outputs/train/.../model``) and the same run named from
    ``EDITLAB_OUTPUTS=/scratch/outputs`` (``/scratch/outputs/train/.../model``) then compare equal: a location
    is compared as a location, not as a string. Relative roots also match their absolute form (the
    working directory's). Paths outside every root are compared as written.
    """
    roots: list[tuple[str, str]] = []
    for key, value in (cfg.get("paths") or {}).items():
        if isinstance(value, str) and value:
            roots += [(form, f"${{paths.{key}}}") for form in {value.rstrip("/"), os.path.abspath(value)}]
    roots.sort(key=lambda r: len(r[0]), reverse=True)  # the most specific root first (stats inside outputs)

    def rewrite(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: rewrite(v) for k, v in x.items()}
        if isinstance(x, list):
            return [rewrite(v) for v in x]
        if isinstance(x, str):
            for root, name in roots:
                if x == root or x.startswith(root + "/"):
                    return name + x[len(root):]
        return x

    return rewrite(cfg)


def config_differences(old: dict, new: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two run configs (top-level ``ignore`` and locations left out;
    paths under the ``paths`` roots compared from their root: :func:`under_roots`)."""
    skip = set(ignore) | set(LOCATION_KEYS)
    a = flatten({k: v for k, v in under_roots(old).items() if k not in skip})
    b = flatten({k: v for k, v in under_roots(new).items() if k not in skip})
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))


def _refuse(run_dir: Path, what: str, diff: list[str], old: dict, new: dict) -> EditlabError:
    shown = ", ".join(f"{k}: {flatten(old).get(k, '<unset>')} -> {flatten(new).get(k, '<unset>')}" for k in diff[:3])
    more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
    return EditlabError(f"{run_dir} holds {what} with a different config ({shown}{more}); choose another "
                        "run_dir=... or pass overwrite=true to replace it")


def prepare(run_dir: Path, run_config: dict, *, ignore: tuple[str, ...], overwrite: bool,
            done: tuple[str, ...] = ("metrics.json",), config_name: str = "run_config.yaml",
            record: bool = True) -> RunState:
    """Decide what to do with ``run_dir`` for a run with ``run_config``: ``"fresh"``, ``"resume"`` or ``"done"``.

    Args:
        run_dir: the run's directory.
        run_config: the resolved config of this command (what ``run_config.yaml`` records).
        ignore: top-level keys that do not change results (compared configs leave them out).
        overwrite: replace whatever ``run_dir`` holds.
        done: files (relative to ``run_dir``) that all exist once the run has finished.
        config_name: where the run's config is recorded, relative to ``run_dir``.
        record: the run owns ``run_dir`` from its start (edit.py): the config is written now, so a killed run
            is found again ("resume") and ``overwrite`` empties the directory first. ``False`` (train.py):
            the run records its config itself when it finishes (the exported model); until then the answer
            is "fresh" and resuming is the caller's choice (``ckpt_path=last``).

    Raises:
        EditlabError: ``run_dir`` holds a run with a different config (naming the differing keys) and
            ``overwrite`` is false.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / config_name
    finished = all((run_dir / f).is_file() for f in done)
    if overwrite:
        if record:
            shutil.rmtree(run_dir, ignore_errors=True)
    elif cfg_path.is_file() and (record or finished):
        old = read_yaml(cfg_path)
        if diff := config_differences(old, run_config, ignore):
            raise _refuse(run_dir, "a finished run" if finished else "a run", diff, old, run_config)
        if finished:
            return "done"
        return "resume"
    if record:
        write_yaml(cfg_path, run_config)
    return "fresh"
