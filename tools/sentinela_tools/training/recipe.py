"""The training recipe as data: the committed one, the plain baseline, and the variants the report compares.

Every field of the committed recipe was chosen on the cross-source figures (leave one source dataset
out, and folder to folder), never on within-source cross-validation: see models/TRAINING_VARIANTS.md,
which ``sentinela train --variants`` rewrites from the same data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Recipe:
    name: str
    # The baseline: scikit-learn's multinomial logistic regression on standardised windows, every window
    # labelled with its clip's label, no weights, no augmentation. Every other row has to beat it.
    plain: bool = False
    c: float = 1.0  # inverse L2 strength (scikit-learn's C) on standardised features
    softmax: bool = True  # one multinomial regression (classes compete, background included)
    clip_weight: bool = True  # each clip weighs the same whatever its length (a 60-s clip is not 20 3-s ones)
    source_power: float = 0.5  # a clip weighs n^-p, n = clips of its class from its source dataset
    class_balance: bool = True  # each class weighs the same in total
    mil: bool = True  # refit on each threat clip's windows that hold the threat (best window + p >= 0.5)
    bandlimit: bool = True  # add the 8 / 16 / 22.05 kHz band-limited copies of every clip
    bandlimit_weight: float = 0.5  # each copy weighs this much of its clip
    mixes_per_clip: int = 0  # threat windows mixed into real background at 0-20 dB SNR
    mix_weight: float = 0.5
    # The base model's own logits for these labels as extra features (they fold into the head's MatMul),
    # at this scale after standardising: BirdNET has heard far more engines and chainsaws than this set.
    logit_labels: tuple[str, ...] = ()
    logit_scale: float = 10.0
    # Per threat class, mix the head's log-odds with the base model's own label logit, the share chosen on
    # the cross-source scores (fit.BLEND_GRID; honest figures choose it without the held-out source).
    base_blend: bool = False
    hard_neg: float = 1.0  # weight multiplier of the background windows the first fit finds most threat-like
    hard_frac: float = 0.05

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def needs_mixes(self) -> bool:
        return self.mixes_per_clip > 0 and not self.plain


BASELINE = Recipe(name="baseline: plain standardised logistic regression", plain=True, c=1.0, softmax=True,
                  clip_weight=False, source_power=0.0, class_balance=False, mil=False, bandlimit=False)

THREAT_LOGITS = ("Gun_Gun", "Power tools_Power tools", "Engine_Engine", "Human vocal_Human vocal", "Dog_Dog")
NON_BIRD_LOGITS = (*THREAT_LOGITS, "Siren_Siren", "Fireworks_Fireworks", "Human non-vocal_Human non-vocal")

# What the cross-source figures chose (TRAINING_VARIANTS.md): a strongly regularised multinomial regression
# whose cheapest features are BirdNET's own non-bird logits, each clip and source weighed fairly, then per
# class blended with BirdNET's own label where that ranks the class better on sources never fitted, and
# refitted on the windows of each threat clip that hold the threat (MIL). What did not help across sources:
# band-limited copies, mixes, hard negatives, one-vs-rest sigmoids.
COMMITTED = Recipe(name="committed", c=0.001, softmax=True, clip_weight=True, source_power=0.5,
                   class_balance=True, mil=True, bandlimit=False, logit_labels=NON_BIRD_LOGITS, logit_scale=10.0,
                   base_blend=True)


def variants() -> dict[str, Recipe]:
    """The recipes ``--variants`` measures beside the committed one: each differs in one choice."""
    c = COMMITTED
    out = {
        "no blend with BirdNET's own labels": replace(c, base_blend=False),
        "no BirdNET logits as features": replace(c, logit_labels=()),
        "BirdNET's five threat-label logits only": replace(c, logit_labels=THREAT_LOGITS),
        f"C x 10 ({c.c * 10:g})": replace(c, c=c.c * 10),
        f"C / 10 ({c.c / 10:g})": replace(c, c=c.c / 10),
        "one-vs-rest sigmoids instead of softmax": replace(c, softmax=False),
        "no source weighting (p = 0)": replace(c, source_power=0.0),
        "full source weighting (p = 1)": replace(c, source_power=1.0),
        "no per-clip weighting": replace(c, clip_weight=False),
        "no MIL (every window of a threat clip is a positive)": replace(c, mil=False),
        "+ band-limited copies (8 / 16 / 22.05 kHz)": replace(c, bandlimit=True),
        "+ threats mixed into background, 2 per clip, 0-20 dB": replace(c, mixes_per_clip=2),
        "+ hard negatives x5 (top 5% of background windows)": replace(c, hard_neg=5.0),
        "logit scale 30": replace(c, logit_scale=30.0),
    }
    return {k: replace(v, name=k) for k, v in out.items()}
