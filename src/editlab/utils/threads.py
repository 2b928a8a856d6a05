"""Torch threads per job, so that parallel jobs share the cores instead of oversubscribing them.

A Hydra multirun with ``hydra/launcher=joblib`` runs ``n_jobs`` jobs at once on one machine; each job's torch
would otherwise start one thread per core, and ``n_jobs`` x cores threads on ``cores`` cores make every job
slower than running them one after another (threads wait on each other at every parallel region). ``threads:
auto`` (edit.py, train.py) gives each job ``cores // n_jobs`` threads (at least one); on a SLURM / local
submitit launcher it uses the job's ``cpus_per_task`` when set. An integer is taken as is.

When editing or scoring (edit.py, evaluate.py pass the model's width; pretraining's batches are large enough
to use every core), a model whose residual stream is at most :data:`SMALL_WIDTH` wide gets one thread under
``auto`` wherever it runs: its matmuls are too small for a second thread to pay (``edit.py method=rome edits.n=50`` on
``mistral_tiny``, 2 idle cores: 17.1 s with 2 threads, 18.8 s with 1), and a thread that waits for a core
another process holds stalls every parallel region (beside one busy process: 40.7 s with 2, 17.8 s with 1).
"""

from __future__ import annotations

import os

import torch

from editlab.errors import EditlabError


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a container or ``taskset`` narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _launcher() -> dict:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    return OmegaConf.to_container(HydraConfig.get().launcher, resolve=True) or {}


SMALL_WIDTH = 256  # hidden sizes up to this run on one thread under threads=auto


def job_threads(setting: int | str, width: int | None = None) -> int | None:
    """Torch threads for this job: an int as is; ``"auto"``: one for a model of hidden size ``width`` <=
    :data:`SMALL_WIDTH`, else shared fairly under a parallel launcher, else None (torch's default: one per core)."""
    if setting != "auto":
        if not isinstance(setting, int) or isinstance(setting, bool) or setting < 1:
            raise EditlabError(f"threads={setting!r} must be a positive integer or auto")
        return setting
    if width is not None and width <= SMALL_WIDTH:
        return 1
    launcher = _launcher()
    target = str(launcher.get("_target_", ""))
    cores = available_cores()
    if "joblib" in target:
        n_jobs = int(launcher.get("n_jobs") or -1)
        n_jobs = cores if n_jobs < 0 else n_jobs  # joblib's -1: one job per core
        return max(1, cores // max(1, n_jobs))
    if "submitit" in target and launcher.get("cpus_per_task"):
        return int(launcher["cpus_per_task"])
    return None


def apply_threads(setting: int | str, width: int | None = None) -> int:
    """Set torch's intra-op threads from ``setting`` and the model's hidden size ``width`` when the config knows it
    (see :func:`job_threads`); returns the threads in use."""
    n = job_threads(setting, width)
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()
