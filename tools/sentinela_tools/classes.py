"""The threat classes the tools train, evaluate and label: the repository's model card's (``models/card.json``
``threats``, in its order), read once from the card file alone. A new class is added to the card (and to
``policy.yaml``), not here; the runtime reads the classes from the card it runs, the same way.
"""

from __future__ import annotations

from pathlib import Path

from sentinela.domain.card import card_threat_classes

REPO_CARD = Path(__file__).resolve().parents[2] / "models" / "card.json"

THREAT_CLASSES: tuple[str, ...] = card_threat_classes(REPO_CARD)
