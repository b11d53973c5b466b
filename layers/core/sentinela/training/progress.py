"""Progress of a training stage with an ETA on stderr: the tools' tqdm bar on a terminal
(``sentinela.progress``), a line every so often otherwise, so that CI logs show where a run is."""

from __future__ import annotations

import sys
import time

from ..progress import progress


class Progress:
    def __init__(self, total: int, what: str, every_s: float = 15.0) -> None:
        self.total, self.what, self.every_s = max(0, total), what, every_s
        self.n = 0
        self.t0 = self._last = time.perf_counter()
        self._tty = sys.stderr.isatty()
        self._bar = progress(total=self.total, desc=what, unit="")

    def step(self, n: int = 1) -> None:
        self.n += n
        self._bar.update(n)
        now = time.perf_counter()
        if not self._tty and now - self._last >= self.every_s and self.n < self.total:
            self._last = now
            rate = self.n / max(now - self.t0, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            log(f"{self.what}: {self.n}/{self.total}, {now - self.t0:.0f} s, ETA {eta:.0f} s")

    def close(self) -> float:
        """Seconds since the start; says once that the stage is done."""
        self._bar.close()
        took = time.perf_counter() - self.t0
        log(f"{self.what}: {self.n}/{self.total} done in {took:.0f} s")
        return took


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
