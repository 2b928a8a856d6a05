"""A damaged world file is one error naming the file and how to rebuild, never a traceback."""

from __future__ import annotations

import shutil

import pytest

from editlab.errors import EditlabError
from editlab.world.loading import World
from editlab.world.tokenizer import load_tokens


def _copy(world, tmp_path):
    out = tmp_path / world.dir.name
    shutil.copytree(world.dir, out)
    return out


@pytest.mark.parametrize(("name", "damage", "read", "needle"), [
    ("world.json", lambda p: p.write_text('{"subjects": ['), lambda w: w.info, "malformed world description file"),
    ("tokens.json", lambda p: p.write_text("{"), lambda w: load_tokens(w.dir), "malformed corpus description file"),
    ("tokens.bin", lambda p: p.write_bytes(b"\0" * 1000), lambda w: load_tokens(w.dir), "truncated or damaged"),
    ("doc_offsets.npy", lambda p: p.write_bytes(b"\x93NUMPY garbage"), lambda w: load_tokens(w.dir), "doc_offsets.npy"),
    ("agent.npz", lambda p: p.write_bytes(b"PK\x03\x04 not a zip"), lambda w: w.agent, "cannot read the agent"),
    ("agent.npz", lambda p: p.unlink(), lambda w: w.agent, "cannot read the agent"),
])
def test_damaged_file_is_one_error_with_the_fix(tiny_world, tmp_path, name, damage, read, needle):
    d = _copy(tiny_world, tmp_path)
    damage(d / name)
    with pytest.raises(EditlabError) as err:
        read(World(d))
    msg = str(err.value)
    assert needle in msg and f"rebuild the world: delete {d}" in msg and "\n" not in msg, msg
