"""BirdNET on onnxruntime: the one :class:`sentinela.domain.scoring.ThreatModel` adapter. One session per
process (per Lambda container).

What is BirdNET's and stays here: its logits clipped to +-15 and scaled by the card's sensitivity before
the sigmoid (as BirdNET's own analyser does), its label format (``Genus_Common``; a sound class repeats
its name, ``Dog_Dog``), the threat head on its embedding, and the FFT front end of the cut graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from sentinela.adapters.frontend import Frontend, FrontendError
from sentinela.config import default_threads
from sentinela.domain.activity import has_signal
from sentinela.domain.card import ModelCard
from sentinela.domain.scoring import WindowBatch


class ModelError(RuntimeError):
    """The model cannot be loaded or does not match its card."""


def _session(path: Path, threads: int) -> ort.InferenceSession:
    if not path.exists():
        raise ModelError(f"model file not found: {path} (run `make model`)")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


LOGIT_CLIP = 15.0


class BirdNetOnnx:
    """A BirdNET-shaped ONNX model (BirdNET V2.4, or the tests' tiny model) run as its card says."""

    def __init__(self, card: ModelCard, threads: int | None = None, embeddings: bool = False) -> None:
        """``embeddings``: fetch the embedding even without a head (training and evaluation need it)."""
        self._card = card
        self.threads = threads or default_threads()
        self.session = _session(card.path, self.threads)
        self.frontend: Frontend | None = None
        self._pool: ThreadPoolExecutor | None = None
        if card.frontend_path is not None:
            try:
                self.frontend = Frontend.load(card.frontend_path)
            except FrontendError as exc:
                raise ModelError(str(exc)) from exc
            # The FFT releases the GIL: the front end gets the session's threads too (they take turns).
            self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        outputs = {o.name for o in self.session.get_outputs()}
        want = [card.logits_output]
        if card.head is not None or embeddings:
            if not card.embedding_output:
                raise ModelError("the card names no embedding output (a threat head reads the embedding)")
            want.append(card.embedding_output)
        missing = [o for o in want if o not in outputs]
        if missing:
            raise ModelError(f"model {card.path.name} has no output(s) {missing}; it has {sorted(outputs)}")
        self._outputs = want
        n_out = self.session.get_outputs()[[o.name for o in self.session.get_outputs()].index(card.logits_output)]
        if isinstance(n_out.shape[-1], int) and n_out.shape[-1] != len(card.labels):
            raise ModelError(f"model has {n_out.shape[-1]} labels, its card lists {len(card.labels)}")
        self.head = _session(card.head.path, 1) if card.head is not None else None
        index = {lab: i for i, lab in enumerate(card.labels)}
        self._threats = card.threat_classes
        self._label_idx = [[index[lab] for lab in card.threats[t].model_labels] for t in self._threats]
        if card.head is not None:
            self._head_cols = [card.head.classes.index(t) if t in card.head.classes else -1 for t in self._threats]

    @property
    def card(self) -> ModelCard:
        return self._card

    @property
    def threat_classes(self) -> tuple[str, ...]:
        return self._threats

    @property
    def model_id(self) -> str:
        return self._card.model_id

    def label_kind(self, label: str) -> str:
        sci, _, common = label.partition("_")
        # BirdNET's non-species classes repeat their name ("Dog_Dog", "Engine_Engine").
        return "other" if sci == common else "species"

    def infer(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Sigmoid scores [n, labels] and the embedding [n, d] (or None) for a batch of windows."""
        x = windows if self.frontend is None else self.frontend(windows, self._pool)
        res = self.session.run(self._outputs, {self.card.input: x})
        logits = np.clip(res[0], -LOGIT_CLIP, LOGIT_CLIP) * self.card.sensitivity
        scores = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        return scores, (res[1] if len(res) > 1 else None)

    def threat_scores(self, scores: np.ndarray, embedding: np.ndarray | None) -> np.ndarray:
        if self.head is not None and embedding is not None:
            assert self.card.head is not None
            probs = self.head.run([self.card.head.output], {self.card.head.input: embedding})[0]
            cols = [probs[:, c] if c >= 0 else np.zeros(len(probs), np.float32) for c in self._head_cols]
            return np.stack(cols, axis=1).astype(np.float32)
        out = np.zeros((scores.shape[0], len(self._threats)), dtype=np.float32)
        for j, idx in enumerate(self._label_idx):
            if idx:
                out[:, j] = scores[:, idx].max(axis=1)
        return out

    def run(self, windows: Iterable[tuple[float, np.ndarray]], batch_size: int = 8) -> Iterator[WindowBatch]:
        """Batch the windows of a clip and score them; the batch is the only thing held at once."""
        starts: list[float] = []
        buf: list[np.ndarray] = []
        for start, w in windows:
            starts.append(start)
            buf.append(w)
            if len(buf) == batch_size:
                yield self._batch(starts, buf)
                starts, buf = [], []
        if buf:
            yield self._batch(starts, buf)

    def _batch(self, starts: list[float], buf: list[np.ndarray]) -> WindowBatch:
        wins = np.stack(buf)
        scores, emb = self.infer(wins)
        threat = self.threat_scores(scores, emb)
        signal = has_signal(wins)
        if not signal.all():
            scores[~signal] = 0.0
            threat[~signal] = 0.0
        return WindowBatch(np.asarray(starts), scores, threat, emb, signal)
