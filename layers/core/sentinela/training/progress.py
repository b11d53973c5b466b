"""Progress with an ETA on stderr: a tqdm bar on a terminal, a line every so often otherwise (CI logs)."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    def __init__(self, total: int, what: str, every_s: float = 15.0) -> None:
        self.total, self.what, self.every_s = max(0, total), what, every_s
        self.n = 0
        self.t0 = self._last = time.perf_counter()
        self._bar: Any = None
        if sys.stderr.isatty() and total > 0:
            try:
                from tqdm import tqdm
            except ImportError:  # the tools' extra brings tqdm; without it, lines as in CI
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=what, unit="", file=sys.stderr, leave=False)

    def step(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last >= self.every_s and self.n < self.total:
            self._last = now
            rate = self.n / max(now - self.t0, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            print(f"{self.what}: {self.n}/{self.total}, {now - self.t0:.0f} s, ETA {eta:.0f} s",
                  file=sys.stderr, flush=True)

    def close(self) -> float:
        """Seconds since the start; says once that the stage is done."""
        took = time.perf_counter() - self.t0
        if self._bar is not None:
            self._bar.close()
        print(f"{self.what}: {self.n}/{self.total} done in {took:.0f} s", file=sys.stderr, flush=True)
        return took


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
