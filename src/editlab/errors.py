"""The one exception type users see.

Every user-facing failure (bad config value, missing file, malformed input) raises
``EditlabError`` with a one-line message that says what to do next. Entry points catch it,
print ``error: <message>`` on one line and exit with status 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class EditlabError(Exception):
    """A user-facing error whose message names the fix."""
