"""The run locations stay out of git however they exist: as directories, or as symlinks to a scratch disk.

A pattern with a trailing slash (``outputs/``) matches directories only, so a symlinked ``outputs`` would be
staged by ``git add -A``, committed, and then, on a pull into a checkout whose ``outputs`` is a real directory,
git would replace that directory (and every run in it) with the link.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCATIONS = ("outputs", ".cache", "multirun")


def _ignored(paths: list[str], gitignore: Path) -> set[str]:
    """The paths that ``gitignore``'s patterns ignore, as plain paths (git does not know they are directories)."""
    res = subprocess.run(["git", "-c", f"core.excludesFile={gitignore}", "check-ignore", "--no-index", *paths],
                         cwd=gitignore.parent, capture_output=True, text=True)
    return set(res.stdout.split())


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_run_locations_are_ignored_as_links_too(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    ours = tmp_path / "ours.gitignore"
    ours.write_text((ROOT / ".gitignore").read_text())
    assert _ignored(list(LOCATIONS), ours) == set(LOCATIONS)
    broken = tmp_path / "broken.gitignore"  # the directory-only form misses a link of the same name
    broken.write_text("".join(f"{name}/\n" for name in LOCATIONS))
    assert _ignored(list(LOCATIONS), broken) == set()
