"""Read and update the "model" entry of models/card.json.

The card is shared: other keys (the threat head, thresholds, ...) belong to other parts of the project,
so this module only ever replaces the "model" key and writes every other key back untouched.
Standard library only: the launcher's up-to-date check runs before any build venv exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MODEL_KEY = "model"


def load_card(card_path: Path) -> dict[str, Any]:
    if not card_path.is_file():
        return {}
    data = json.loads(card_path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{card_path}: expected a JSON object at the top level")
    return data


def model_entry(card_path: Path) -> dict[str, Any]:
    entry = load_card(card_path).get(MODEL_KEY)
    return entry if isinstance(entry, dict) else {}


def write_model_entry(card_path: Path, entry: dict[str, Any]) -> None:
    """Replace only card["model"], keeping the other keys and their order."""
    card = load_card(card_path)
    card[MODEL_KEY] = entry
    text = json.dumps(card, indent=2, ensure_ascii=False) + "\n"
    tmp = card_path.with_name(card_path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    # Atomic so that a build killed mid-write never leaves a card the runtime cannot parse.
    os.replace(tmp, card_path)
