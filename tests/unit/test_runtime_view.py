"""How `up` and `restart` draw their live progress block on a real terminal (a pty)."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import termios
from collections.abc import Iterator

import pytest

from deployer.cli.runtime_view import ProgressPrinter
from deployer.runtime import Progress, Stage

_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture
def tty(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, int]]:
    """(master, slave) of a pseudo-terminal."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def _resize(fd: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))


def _read_all(master: int) -> bytes:
    """Everything written so far: one read may return only part of it on a busy machine."""
    data = b""
    while select.select([master], [], [], 0.2)[0]:
        chunk = os.read(master, 65536)
        if not chunk:
            break
        data += chunk
    return data


def _draw_rows(master: int, slave: int, columns: int) -> list[str]:
    """Rows the block writes on a terminal `columns` wide, escape codes removed."""
    _resize(slave, columns)
    with os.fdopen(os.dup(slave), "w") as stream:
        printer = ProgressPrinter(["medium", "mini"], stream=stream)
        printer(Progress("medium", Stage.LOADING, 12.0, "HTTP 503 while the engine profiles"))
        printer(Progress("mini", Stage.WAITING, 3.0, "for medium"))
    raw = _read_all(master).decode()
    return [_ESCAPE.sub("", row) for row in raw.replace("\r", "").split("\n") if row]


def test_each_line_fits_a_narrow_terminal_so_the_redraw_stays_in_place(
    tty: tuple[int, int],
) -> None:
    master, slave = tty
    rows = _draw_rows(master, slave, 20)
    assert rows and all(len(row) <= 19 for row in rows), rows
    # Three rows: medium once, then medium and mini redrawn in place (cursor up 1 row each).
    assert [row.split()[0] for row in rows] == ["medium", "medium", "mini"]


def test_a_wide_terminal_gets_the_whole_line(tty: tuple[int, int]) -> None:
    master, slave = tty
    rows = _draw_rows(master, slave, 200)
    assert rows[-2].endswith("HTTP 503 while the engine profiles")
    assert rows[-1].endswith("for medium")
