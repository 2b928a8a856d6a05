"""The one error and signal wrapper of every entry point (train.py, edit.py, evaluate.py, ``-m editlab.world``).

- :class:`~editlab.errors.EditlabError` (bad input the user can fix): ``error: <one line>``, exit 2.
- an OmegaConf interpolation error caused by an :class:`~editlab.errors.EditlabError` (a resolver such as
  ``${editlab.traced_layer:...}`` refusing its input while the entry point resolves its config): that
  error's one line, exit 2; OmegaConf would otherwise wrap it in a traceback.
- :class:`~editlab.utils.signals.Interrupted` (SIGTERM / SIGINT): ``interrupted: ...`` with how to
  resume, exit 143 / 130, so ``make`` and shell pipelines stop instead of carrying on.

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf.errors import InterpolationResolutionError

from editlab.errors import EditlabError
from editlab.utils.quiet import silence_third_party
from editlab.utils.signals import Interrupted, graceful_stop

T = TypeVar("T")


def run_cli(fn: Callable[[], T], resume_hint: str = "re-run the same command to resume") -> T:
    """Call ``fn()`` under :func:`~editlab.utils.signals.graceful_stop`; map user errors and signals to exits."""
    silence_third_party()
    try:
        with graceful_stop():
            return fn()
    except EditlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
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
