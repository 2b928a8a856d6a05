"""Config nodes into typed dataclasses (editlab.utils.typed): wrong types, unknown keys and non-finite numbers
are one error naming the key, before anything runs."""

from __future__ import annotations

import pytest

from editlab.errors import EditlabError
from editlab.runs.config import EditsConfig
from editlab.utils.typed import from_dict


@pytest.mark.parametrize(("raw", "message"), [
    ({"n": "abc"}, "edits.n='abc' should be an int"),
    ({"n": 2.5}, "edits.n=2.5 should be an int"),
    ({"n": True}, "edits.n=True should be an int"),
    ({"nn": 3}, "unknown key(s) ['nn'] in edits"),
    ({"n": float("nan")}, "edits.n=nan"),
])
def test_bad_values_name_the_key(raw, message):
    with pytest.raises(EditlabError) as err:
        from_dict(EditsConfig, raw, "edits")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_good_values_pass():
    assert from_dict(EditsConfig, {"n": 5}, "edits").n == 5
