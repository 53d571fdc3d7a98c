"""Error lines reach stderr whole: ranks share their launcher's stderr, so a line must be one
write, or two ranks failing at once tear each other's lines."""

from __future__ import annotations

import io
import sys

import pytest

from fusionrec.errors import UserError, exit_on_user_error, print_line


class Writes(io.StringIO):
    """A stderr that records every write call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_a_user_error_is_one_write_of_the_line_and_its_newline(monkeypatch):
    stderr = Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit) as done:
        with exit_on_user_error():
            raise UserError("data.train: no Parquet files")
    assert done.value.code == 2
    assert stderr.calls == ["error: data.train: no Parquet files\n"]


def test_print_line_is_one_write(monkeypatch):
    stderr = Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    print_line("note: x")
    print("note: y", file=stderr)  # what it replaces: the text, then the newline
    assert stderr.calls == ["note: x\n", "note: y", "\n"]
