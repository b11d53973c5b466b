"""Progress with an ETA for the long-running tools (demo, and eval/train when they adopt it).

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
