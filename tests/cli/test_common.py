"""rest.cli.common: the progress bar (tqdm on a real pseudo-terminal, log lines elsewhere) and the parser."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import struct
import termios
import time

import pytest

from rest.cli.common import Parser, ProgressBar


def _read_all(fd: int) -> str:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_on_a_terminal_a_bar_is_drawn_and_erased_and_restarts_with_the_count():
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    with os.fdopen(terminal, "w", buffering=1) as stream:
        bar = ProgressBar("files", stream=stream)
        assert bar.tty
        bar(10, 100)
        time.sleep(0.15)  # tqdm redraws at most every 0.1 s
        bar(50, 100)
        bar(100, 100)
        assert bar.bar is None  # closed when done reached total
        bar(3, 8)
        bar(1, 8)  # the count went back (the next epoch): a new bar
        bar.close()
        stream.flush()
        shown = _read_all(controller)
    os.close(controller)
    assert "50/100" in shown and " files/s" in shown
    assert shown.count("| 0/8 ") == 2
    assert shown.rstrip("\r").split("\r")[-1].strip() == ""  # the last bar's line was cleared, not left behind


def test_off_a_terminal_big_jobs_log_every_tenth_and_small_ones_stay_quiet(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="rest.test"):
        big = ProgressBar("images", stream=stream, log_from=1000, logger="rest.test")
        for done in range(0, 2001, 50):
            big(done, 2000)
        small = ProgressBar("images", stream=stream, log_from=1000, logger="rest.test")
        for done in range(0, 501, 50):
            small(done, 500)
    assert stream.getvalue() == ""  # no bar characters in a log
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"{d}/2000 images ({100 * d // 2000}%)" for d in range(200, 2001, 200)]


def test_log_from_none_never_logs(caplog):
    with caplog.at_level(logging.INFO):
        bar = ProgressBar("batches", stream=io.StringIO(), log_from=None)
        for done in range(1, 100_001, 10_000):
            bar(done, 100_000)
    assert not caplog.records


def test_parser_errors_are_one_line_exit_2(capsys):
    parser = Parser(prog="tune_search.py")
    parser.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--n", "x"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: argument --n: invalid int value") and "see 'tune_search.py --help'" in err
