"""Progress with an ETA for the long-running tools (demo; eval and train through ``Stage``).

Shown only when the stream is a terminal: piped or captured output (CI, `--json`, tests) stays exactly
what it was. tqdm is a tools dependency (the ``tools`` extra), never the Lambda runtime's: without it,
or off a terminal, :func:`progress` returns a bar that does nothing.

    with progress(total=len(files), desc="classifying", unit="clip") as bar:
        for f in files:
            ...
            bar.update(1)          # or bar.set_done(n) when the count comes from elsewhere
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO


class Progress:
    """The bar's interface; this base class is the silent one."""

    def update(self, n: int = 1) -> None:
        return None

    def set_done(self, done: int) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _Tqdm(Progress):
    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def set_done(self, done: int) -> None:
        if done > self._bar.n:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


def progress(total: int | None, desc: str, unit: str = "it", stream: TextIO | None = None,
             enabled: bool | None = None) -> Progress:
    """A progress bar on ``stream`` (default stderr, so stdout stays the command's output) with rate and
    ETA; silent unless ``enabled`` or, by default, ``stream`` is a terminal and tqdm is installed."""
    out = stream or sys.stderr
    if enabled is None:
        enabled = bool(getattr(out, "isatty", lambda: False)())
    if not enabled:
        return Progress()
    try:
        from tqdm import tqdm
    except ImportError:
        return Progress()
    import shutil

    # A terminal that reports no size (a pty under `script`, some CI runners) would get a zero-width bar.
    width = shutil.get_terminal_size((100, 24)).columns or 100
    return _Tqdm(tqdm(total=total, desc=desc, unit=unit, file=out, ncols=min(width, 120), leave=False))


class Stage:
    """A long stage of a tool (training, eval): ``progress``'s bar on a terminal, and otherwise a line with
    the ETA every ``every_s`` seconds on stderr, so that CI logs show where a run is; ``close`` says once
    that it is done and how long it took."""

    def __init__(self, total: int, what: str, every_s: float = 15.0) -> None:
        import time

        self._clock = time.perf_counter
        self.total, self.what, self.every_s = max(0, total), what, every_s
        self.n = 0
        self.t0 = self._last = self._clock()
        self._tty = sys.stderr.isatty()
        self._bar = progress(total=self.total, desc=what, unit="")

    def step(self, n: int = 1) -> None:
        self.n += n
        self._bar.update(n)
        now = self._clock()
        if not self._tty and now - self._last >= self.every_s and self.n < self.total:
            self._last = now
            rate = self.n / max(now - self.t0, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            log(f"{self.what}: {self.n}/{self.total}, {now - self.t0:.0f} s, ETA {eta:.0f} s")

    def close(self) -> float:
        self._bar.close()
        took = self._clock() - self.t0
        log(f"{self.what}: {self.n}/{self.total} done in {took:.0f} s")
        return took


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def native_stderr_to(path: Path) -> Iterator[Path]:
    """Send what native libraries write straight to file descriptor 2 (libmpg123's "part2_3_length too
    large" lines while decoding an MP3) to ``path`` instead of the terminal. Python's own ``sys.stderr``
    keeps writing to the terminal meanwhile (its lines are the ones a person must see); nothing is lost,
    the native lines are in the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    terminal = os.fdopen(saved, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    # Only a sys.stderr that writes to fd 2 needs moving; one already elsewhere (captured) stays.
    python_err = terminal if _writes_to_fd(sys.stderr, 2) else sys.stderr
    with path.open("a", encoding="utf-8") as f, contextlib.redirect_stderr(python_err):
        os.dup2(f.fileno(), 2)
        try:
            yield path
        finally:
            terminal.flush()
            os.dup2(saved, 2)
            terminal.close()
            os.close(saved)


def _writes_to_fd(stream: Any, fd: int) -> bool:
    try:
        return bool(stream.fileno() == fd)
    except (AttributeError, OSError, ValueError):
        return False
