"""Progress of long data steps (downloads, extraction, decoding) as (label, done, total, unit) calls, so a
step reports the same way here and from a Ray task, whose driver turns them into bars."""

from __future__ import annotations

from collections.abc import Callable

from tqdm.std import tqdm

from ..progress import progress_bar

Progress = Callable[[str, int, int, str], None]  # (label, done, total, unit); unit "B" shows bytes


class ProgressBars:
    """A Progress that draws one tqdm bar per label (on stderr), closed when its total is reached."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bars: dict[str, tqdm] = {}

    def __call__(self, label: str, done: int, total: int, unit: str) -> None:
        bar = self.bars.get(label)
        if bar is None:
            bar = self.bars[label] = progress_bar(total=total or None, initial=done, desc=label, unit=unit,
                                          unit_scale=unit == "B", unit_divisor=1024 if unit == "B" else 1000,
                                          disable=not self.enabled)
        else:
            bar.update(done - bar.n)
        if total and done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
