"""The entry points' error wrapper (editlab.cli.run_cli): one line on the console for every failure."""

from __future__ import annotations

import pytest

from editlab.cli import run_cli
from editlab.errors import EditlabError


def _exit(capsys, fn) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        run_cli(fn)
    return exc.value.code, capsys.readouterr().err


def test_user_error_is_one_line_exit_2(capsys):
    def bad():
        raise EditlabError("edits.n=0 must be positive")

    code, err = _exit(capsys, bad)
    assert code == 2 and err == "error: edits.n=0 must be positive\n"


def test_unwritable_location_names_the_file_and_the_settings(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = _exit(capsys, lambda: (blocker / "run" / "metrics.json").parent.mkdir(parents=True))
    assert code == 2 and err.count("\n") == 1 and f"cannot use {blocker / 'run'}" in err and "EDITLAB_OUTPUTS" in err


def test_a_missing_input_file_is_not_called_unwritable(capsys, tmp_path):
    code, err = _exit(capsys, lambda: (tmp_path / "run_config.yaml").read_text())
    assert code == 2 and err == (f"error: no file {tmp_path / 'run_config.yaml'}; the command that writes it has not "
                                 "finished there, or the path is wrong\n")


def test_a_bug_is_one_line_and_its_traceback_goes_to_a_log_file(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITLAB_OUTPUTS", str(tmp_path))

    def bug():
        return {}["missing"]

    code, err = _exit(capsys, bug)
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: unexpected KeyError: 'missing'"), err
    (log,) = (tmp_path / "logs").iterdir()
    assert f"the traceback is in {log}" in err
    assert "Traceback (most recent call last)" in log.read_text() and "{}[\"missing\"]" in log.read_text()
