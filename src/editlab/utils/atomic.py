"""Atomic directory builds: write into a temporary sibling, mark complete, then rename.

A reader trusts a directory only if its ``COMPLETE`` marker holds the expected key, so a killed
build never leaves something a later run would use; leftovers of dead builds are removed.

:func:`publish` replaces a directory that is rebuilt in place (a report, an analysis) the same way: the
previous one stays until the new one is whole.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

MARKER = "COMPLETE"
REPORT_KEY = "editlab-report-1"  # the marker key of a directory written by publish


def is_complete(directory: Path, key: str) -> bool:
    """True when ``directory`` was finished by a build for ``key``."""
    marker = directory / MARKER
    return marker.is_file() and marker.read_text().strip() == key


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(final: Path) -> None:
    """Remove temporary build directories of ``final`` whose building process is gone, and an
    incomplete ``final`` itself."""
    for tmp in final.parent.glob(f".tmp-{final.name}-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
    if final.exists() and not (final / MARKER).is_file():
        shutil.rmtree(final, ignore_errors=True)


def _apply_umask(root: Path) -> None:
    """Give every file under ``root`` the mode a plain ``open`` would (0666 less the umask).

    Some writers (safetensors through ``save_pretrained``) create their files 0600, which would leave a
    shared output directory unreadable to the rest of the user's group.
    """
    mask = os.umask(0)
    os.umask(mask)
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~mask)


@contextlib.contextmanager
def atomic_directory(final: Path, key: str) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success write the marker and rename it to ``final``.

    On any exception the temporary directory is removed and ``final`` is left untouched. If another
    process finished ``final`` first, ours is discarded (both are identical by construction).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        (tmp / MARKER).write_text(key + "\n")
        _apply_umask(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final, key):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(out: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` into a fresh staging directory, then replace ``out`` with it (nothing half-written)."""
    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    with atomic_directory(staging, REPORT_KEY) as tmp:
        write(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(staging, out)
