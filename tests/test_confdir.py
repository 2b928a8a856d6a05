"""utils/confdir.py: the configs are found from the checkout without a fixed source depth, or where
EDITLAB_CONF says; a wrong EDITLAB_CONF is one clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from editlab.errors import EditlabError
from editlab.utils.confdir import conf_dir

ROOT = Path(__file__).resolve().parents[1]


def test_checkout_conf_is_found(monkeypatch):
    monkeypatch.delenv("EDITLAB_CONF", raising=False)
    assert conf_dir() == ROOT / "conf"


def test_editlab_conf_wins(monkeypatch, tmp_path):
    copy = tmp_path / "conf"
    copy.mkdir()
    shutil.copy(ROOT / "conf" / "edit.yaml", copy / "edit.yaml")
    monkeypatch.setenv("EDITLAB_CONF", str(copy))
    assert conf_dir() == copy.resolve()


def test_wrong_editlab_conf_is_one_error(monkeypatch, tmp_path):
    monkeypatch.setenv("EDITLAB_CONF", str(tmp_path))
    with pytest.raises(EditlabError, match="EDITLAB_CONF"):
        conf_dir()
