"""Labelled folders -> the clips training sees, each with its recording group and source dataset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from sentinela_tools.evaluate import LabelledClip, scan_dataset


def load_folders(dirs: Sequence[str | Path]) -> list[tuple[str, LabelledClip]]:
    """``(folder name, clip)`` for the clips of every folder (``DIR/<label>/``). With several folders each
    clip's ``rel`` starts with its folder's name (``dev/gunshot/x.wav``): equal names stay two clips."""
    roots = [Path(d) for d in dirs]
    names = [r.resolve().name for r in roots]
    if len(set(names)) != len(names):
        raise ValueError("two data folders share a name: " + ", ".join(str(r) for r in roots))
    out: list[tuple[str, LabelledClip]] = []
    for root, name in zip(roots, names, strict=True):
        clips = scan_dataset(root)
        out.extend((name, c if len(roots) == 1 else replace(c, rel=f"{name}/{c.rel}")) for c in clips)
    return out
