"""The threat classes the tools train, evaluate and label: the model card's (``MODEL_CARD``, else ``models/card.json``
``threats``, in its order), read once from the card file alone. A new class is added to the card (and to
``policy.yaml``), not here; the runtime reads the classes from the card it runs, the same way.
"""

from __future__ import annotations

from sentinela.config import default_card_path
from sentinela.domain.card import card_threat_classes

REPO_CARD = default_card_path()  # MODEL_CARD, else the checkout's models/card.json

# A CardError here (no card) makes the commands that need the list say so (sentinela_tools.cli).
THREAT_CLASSES: tuple[str, ...] = card_threat_classes(REPO_CARD)
