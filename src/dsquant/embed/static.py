"""A static text encoder: one vector per token, a text is the mean of its tokens' vectors.

Model2Vec's recipe (Tulkens & van Dongen, 2024, https://github.com/MinishLab/model2vec): every
token of a sentence-transformers model's vocabulary is passed through the model once, alone
between two special tokens; the mean of the model's output over those three positions is the
token's vector; PCA reduces the vectors to 256 dimensions; each vector is scaled by the SIF
weight ``a / (a + p)`` with ``a = 1e-4`` and ``p`` the token's probability under Zipf's law by
its rank in the vocabulary. Texts are tokenized without special tokens and without a length
limit. No data is needed, and distilling all-MiniLM-L6-v2 takes about a minute on 2 cores; the
result is cached (``~/.cache/dsquant/static``, or the run's ``--cache-dir``), and embedding is 100x faster than the model it
comes from, at a quality cost measured in ``docs/text.md``.

The distillation is ours (model2vec's own needs transformers < 5.4); inference runs through
sentence-transformers' ``StaticEmbedding`` module. A model2vec folder (``model.safetensors``
with an ``embeddings`` tensor, ``tokenizer.json``) is loaded as it is.
"""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path

import numpy as np

from .text import TextEncoder, clean_text

__all__ = ["StaticEncoder", "distill_static"]

_UNUSED = re.compile(r"^\[unused\d+\]$")


def distill_static(st_model, pca_dims: int = 256, sif: float = 1e-4, batch_size: int = 1024, progress: bool = False) -> tuple[np.ndarray, str]:
    """Distil a static embedding from a loaded sentence-transformers model (model2vec's recipe,
    module docstring).

    Args:
        st_model: a ``SentenceTransformer`` whose first module is a transformers model.
        pca_dims: dimensions kept by PCA (all if the model or its vocabulary has fewer).
        sif: the SIF coefficient ``a``.
        batch_size: tokens per forward pass.

    Returns:
        ``(vectors, tokenizer_json)``: (V, pca_dims) float32 token vectors, row ``i`` for token
        id ``i``, and the tokenizer (``tokenizers`` JSON) that maps texts to those ids.

    Raises:
        ValueError: if the model's first module is not a transformers model with a fast tokenizer.
    """
    import torch
    from sklearn.decomposition import PCA
    from tqdm.auto import tqdm

    first = st_model[0]
    model, tokenizer = getattr(first, "auto_model", None), getattr(st_model, "tokenizer", None)
    if model is None or not hasattr(tokenizer, "backend_tokenizer"):
        raise ValueError("static encoder: distillation needs a sentence-transformers model built on a transformers model with a fast tokenizer")
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    ids = torch.arange(size)
    head, *_, tail = tokenizer("a")["input_ids"]  # the model's opening and closing special tokens
    rows = torch.stack([torch.full_like(ids, tail), ids, torch.full_like(ids, head)], 1)  # reversed: model2vec's finding
    out = np.empty((size, model.config.hidden_size), dtype=np.float32)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in tqdm(range(0, size, batch_size), desc="distil static embedding", unit="batch", disable=not progress):
            batch = rows[start:start + batch_size].to(device)
            hidden = model(input_ids=batch, attention_mask=torch.ones_like(batch), token_type_ids=torch.zeros_like(batch)).last_hidden_state
            out[start:start + len(batch)] = hidden.float().mean(1).cpu().numpy()
    names = {i: t for t, i in vocab.items()}
    used = np.array([not _UNUSED.match(names.get(i, "")) for i in range(size)])
    k = min(pca_dims, out.shape[1], int(used.sum()))
    vectors = PCA(n_components=k, svd_solver="full").fit(out[used]).transform(out).astype(np.float32)
    zipf = 1.0 / np.arange(2, size + 2)
    vectors *= (sif / (sif + zipf / zipf.sum()))[:, None].astype(np.float32)
    backend = tokenizer.backend_tokenizer
    return vectors, backend.to_str()


class StaticEncoder(TextEncoder):
    """Embed texts as the normalised mean of static token vectors (module docstring).

    Args:
        model: ``"static"`` (distilled from all-MiniLM-L6-v2, offline, cached), ``"static:PATH"``
            with PATH a model2vec folder (used as it is) or a sentence-transformers model
            (distilled from it, cached), or PATH itself.
        batch_size: texts per call of the module.
        device: torch device of the distillation (default CUDA when present); embedding runs on
            the CPU.
        cache_dir: where the distilled table is cached (default dsquant's cache, ``compress``'s
            ``cache_dir`` when run from there); False: not cached (distilled on every load).

    Raises:
        ValueError: on an unusable device or a model that cannot be loaded.
    """

    name = "static"
    kinds = ("text",)
    summary = "static token vectors distilled from a sentence model (model2vec's recipe): 100x faster, a coarser embedding"
    argument = None
    cached = True

    def __init__(self, model: str = "static", batch_size: int = 4096, device: str | None = None, cache_dir=None) -> None:
        from ..training import resolve_device

        resolve_device(device)
        source = model.partition(":")[2] if model.startswith("static") else model
        self.model_name = model
        self.source = source or "all-MiniLM-L6-v2"
        self.batch_size = batch_size
        self.device = device
        self.cache_dir = cache_dir
        self._model = None
        self._config: dict | None = None
        self.info: dict = {}

    def _is_model2vec(self) -> bool:
        cfg = Path(self.source) / "config.json"
        try:
            return cfg.is_file() and json.loads(cfg.read_text()).get("model_type") == "model2vec"
        except (OSError, ValueError):
            return False

    def config(self) -> dict:
        """What the embedding depends on, the weights by content (hashed once per encoder)."""
        from ..cache import file_digest
        from .text import SentenceEncoder

        if self._config is None:
            if self._is_model2vec():
                self._config = {"encoder": self.name, "model2vec": str(Path(self.source).resolve()), "weights": file_digest(Path(self.source) / "model.safetensors")}
            else:
                base = SentenceEncoder(self.source, precision="float32", device="cpu").config()
                self._config = {"encoder": self.name, "distilled_from": base, "pca_dims": 256, "sif": 1e-4, "recipe": "model2vec-mean3"}
        return copy.deepcopy(self._config)  # the caller may change its copy

    def _table(self, progress: bool) -> tuple[np.ndarray, str]:
        """The token vectors and tokenizer: read (model2vec folder), or distilled once and cached."""
        if self._is_model2vec():
            from safetensors.numpy import load_file

            try:
                vectors = load_file(str(Path(self.source) / "model.safetensors"))["embeddings"]
                return np.asarray(vectors, dtype=np.float32), (Path(self.source) / "tokenizer.json").read_text()
            except (OSError, KeyError, ValueError) as exc:
                raise ValueError(f"static encoder: cannot read the model2vec folder {self.source} ({exc})") from None
        from ..cache import Cache, hash_key
        from .text import SentenceEncoder

        cache = Cache(self.cache_dir or None, enabled=self.cache_dir is not False)
        key = hash_key(self.config())
        expect = {"vectors": ("f", (None, None)), "tokenizer": ("U", 0)}
        hit = cache.load("static", key, expect)
        if hit is not None:
            self.info = {"distilled": False}
            return hit["vectors"], str(hit["tokenizer"])
        t = time.perf_counter()
        st = SentenceEncoder(self.source, precision="float32", device=self.device).load(progress)
        vectors, tok = distill_static(st, progress=progress)
        self.info = {"distilled": True, "distill_seconds": round(time.perf_counter() - t, 1)}
        cache.save("static", key, {"vectors": vectors, "tokenizer": np.array(tok)})
        return vectors, tok

    def load(self, progress: bool = True):
        """The sentence-transformers model holding the static module (built once)."""
        if self._model is None:
            import torch
            from sentence_transformers import SentenceTransformer
            from tokenizers import Tokenizer

            try:
                from sentence_transformers.sentence_transformer.modules import StaticEmbedding
            except ImportError:  # sentence-transformers < 6
                from sentence_transformers.models import StaticEmbedding

            vectors, tok = self._table(progress)
            tokenizer = Tokenizer.from_str(tok)
            tokenizer.no_truncation()
            tokenizer.no_padding()
            module = StaticEmbedding(tokenizer, embedding_weights=torch.from_numpy(vectors))
            self._model = SentenceTransformer(modules=[module], device="cpu")
        return self._model

    def encode_texts(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """(N, d) float32 L2-normalised embeddings of ``texts``."""
        model = self.load(progress)
        out = model.encode([clean_text(t) for t in texts], batch_size=self.batch_size, show_progress_bar=progress, convert_to_numpy=True, normalize_embeddings=True)
        return np.asarray(out, dtype=np.float32)
