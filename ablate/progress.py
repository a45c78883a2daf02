"""Progress bars, one way for every long step: tqdm's live bar on a terminal; in a log (a file, a pipe,
a Ray worker's forwarded output) whole lines, one every ~10 % or 30 s, never carriage-return frames."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm.auto import tqdm as terminal_tqdm
from tqdm.std import tqdm

LINE_EVERY_S = 30.0  # at least one line this often while a bar moves
LINE_EVERY_FRACTION = 0.1  # and one each time this much more of the total is done...
QUIET_FOR_S = 3.0  # ...but nothing for a step shorter than this (an epoch of a small trial)
LOG_FORMAT = "{desc}: {percentage:3.0f}% ({n_fmt}/{total_fmt} {unit}) [{elapsed} elapsed, ~{remaining} left]"
LOG_FORMAT_NO_TOTAL = "{desc}: {n_fmt} {unit} [{elapsed} elapsed]"


def interactive(stream: IO[str] | None) -> bool:
    return bool(stream is not None and getattr(stream, "isatty", lambda: False)())


def progress_bar(iterable: Iterable | None = None, *, file: IO[str] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on `file` (default stderr): live on a terminal, whole lines in a log."""
    stream = file if file is not None else sys.stderr
    cls = terminal_tqdm if interactive(stream) else LogProgress
    return cls(iterable, file=stream, **kwargs)


class LogProgress(tqdm):
    """tqdm that writes whole lines: one each time another tenth (LINE_EVERY_FRACTION) of the total is done,
    or LINE_EVERY_S after the last line; none within QUIET_FOR_S of the start or of the last line. A bar
    that stays (`leave`) ends with its final line; one that printed nothing and does not stay prints nothing."""

    def __init__(self, iterable: Iterable | None = None, *args: Any, **kwargs: Any) -> None:
        self._last_line: tuple[float, float] | None = None  # (time, n) of the last line written
        kwargs.setdefault("mininterval", 1.0)  # how often tqdm asks display() at most
        kwargs.setdefault("miniters", 1)  # ...and on any update after that: the clock decides, not a rate guess
        if "bar_format" not in kwargs:
            kwargs["bar_format"] = LOG_FORMAT if _total(iterable, kwargs) else LOG_FORMAT_NO_TOTAL
        super().__init__(iterable, *args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is None and self._due():
            self._write_line()
        return True  # tqdm's clearing messages (msg "") have nothing to erase in a log

    def _due(self) -> bool:
        now = self._time()
        start = getattr(self, "start_t", now)  # tqdm displays once before it sets start_t
        last_t, last_n = self._last_line or (start, 0)
        if now - last_t >= LINE_EVERY_S:
            return True
        return now - start >= QUIET_FOR_S and now - last_t >= QUIET_FOR_S and self._tenth(self.n) > self._tenth(last_n)

    def _tenth(self, n: float) -> int:
        """Which tenth of the total `n` has reached (0 without a total)."""
        return int(n / (self.total * LINE_EVERY_FRACTION)) if self.total else 0

    def _write_line(self) -> None:
        self._last_line = (self._time(), self.n)
        self.fp.write(str(self).rstrip() + "\n")
        getattr(self.fp, "flush", lambda: None)()

    def clear(self, nolock: bool = False) -> None:
        pass  # nothing drawn in place

    def moveto(self, n: int) -> None:
        pass  # no cursor in a log

    def close(self) -> None:
        if getattr(self, "disable", True):
            return
        if (self.leave or self._last_line is not None) and (self._last_line is None or self._last_line[1] != self.n):
            self._write_line()
        self.disable = True
        self._decr_instances(self)


def _total(iterable: Iterable | None, kwargs: dict) -> bool:
    if kwargs.get("total") is not None:
        return bool(kwargs["total"])
    try:
        return bool(len(iterable))  # type: ignore[arg-type]
    except TypeError:
        return False
