"""The ``fusionrec`` console script dispatches to the module entry points."""

import pytest

from fusionrec import cli


def test_lists_commands_without_arguments(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    for name in ("generate", "train", "evaluate", "plan", "census", "movielens"):
        assert name in err


def test_dispatches_to_module_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--help"])
    assert exit_info.value.code == 0
    assert "--checkpoint" in capsys.readouterr().out


def test_an_unknown_command_is_named(capsys):
    assert cli.main(["bogus"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "error: unknown command 'bogus'" and "export" in err and "predict" in err
