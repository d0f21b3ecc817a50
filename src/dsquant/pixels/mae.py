"""A masked autoencoder (MAE, He et al. 2022) whose ``state_dict`` layout is the official one.

The module mirrors ``MaskedAutoencoderViT`` of facebookresearch/mae (models_mae.py): the same
parameter names and shapes (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.*`` as
timm's Block, ``norm``, ``decoder_embed``, ``mask_token``, ``decoder_pos_embed``,
``decoder_blocks.N.*``, ``decoder_norm``, ``decoder_pred``), the same fixed 2-D sin-cos position
embeddings, the same ``patchify`` order. So the released checkpoints load as they are:
``mae_visualize_vit_large_ganloss.pth`` (ViT-L/16) and the ``*_full`` / visualize ViT-B/16 files
(``{"model": state_dict}``, loaded with ``weights_only=True``). Note: the plain
``mae_pretrain_vit_*.pth`` files hold the encoder only and cannot reconstruct.

Unlike the official ``forward``, which masks at random, :meth:`reconstruct` takes the mask: the
patches to rebuild are exactly the dropped ones. Small configurations of the same module are the
``tiny-mae`` that ``dsquant train-mae`` trains on a user's dataset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MAEConfig", "MaskedAutoencoderViT", "sincos_pos_embed", "load_mae", "OFFICIAL_CONFIGS", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class MAEConfig:
    """Architecture of a :class:`MaskedAutoencoderViT` (the official defaults are ViT-L/16)."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    mean: tuple[float, ...] = IMAGENET_MEAN  # input normalisation the model was trained with
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> dict:
        """The config as plain JSON values (tuples as lists), as checkpoints and the cache store it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.to_dict().items()}

    @classmethod
    def from_json(cls, values: dict) -> "MAEConfig":
        """The config :meth:`to_json` stored (lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


OFFICIAL_CONFIGS = {
    "vit_base_patch16": MAEConfig(embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16": MAEConfig(embed_dim=1024, depth=24, num_heads=16),
}


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> np.ndarray:
    """The official fixed 2-D sin-cos position embedding, (grid*grid [+1], dim) float32.

    The first half of the channels encodes the column (w) coordinate, the second half the row;
    each half is ``[sin(pos * omega), cos(pos * omega)]`` with ``omega = 1 / 10000^(k / (dim/4))``;
    the cls row is zeros.
    """
    gh = np.arange(grid, dtype=np.float64)
    gw = np.arange(grid, dtype=np.float64)
    mesh = np.meshgrid(gw, gh)  # w goes first, as in the official code
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))

    def one(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one(mesh[0]), one(mesh[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return emb.astype(np.float32)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """timm's ViT Block (pre-norm attention and MLP, LayerNorm eps 1e-6)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class MaskedAutoencoderViT(nn.Module):
    """MAE with the official parameter layout; see the module docstring."""

    def __init__(self, config: MAEConfig = MAEConfig()) -> None:
        super().__init__()
        c = config
        if c.img_size % c.patch_size:
            raise ValueError(f"img_size {c.img_size} is not a multiple of patch_size {c.patch_size}")
        self.config = c
        n = c.grid * c.grid
        self.patch_embed = _PatchEmbed(c.patch_size, c.in_chans, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_pos_embed(c.embed_dim, c.grid))[None], requires_grad=False)
        self.blocks = nn.ModuleList([_Block(c.embed_dim, c.num_heads, c.mlp_ratio) for _ in range(c.depth)])
        self.norm = nn.LayerNorm(c.embed_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.from_numpy(sincos_pos_embed(c.decoder_embed_dim, c.grid))[None], requires_grad=False)
        self.decoder_blocks = nn.ModuleList([_Block(c.decoder_embed_dim, c.decoder_num_heads, c.mlp_ratio) for _ in range(c.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(c.decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, c.patch_size**2 * c.in_chans, bias=True)
        self.register_buffer("_mean", torch.tensor(c.mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(c.std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self._init_weights()
        assert n == self.pos_embed.shape[1] - 1

    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- the official patch layout: each patch vector is (row in patch, column in patch, channel)
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        p, h = self.config.patch_size, imgs.shape[2] // self.config.patch_size
        w = imgs.shape[3] // p
        x = imgs.reshape(imgs.shape[0], imgs.shape[1], h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(imgs.shape[0], h * w, p * p * imgs.shape[1])

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p, c = self.config.patch_size, self.config.in_chans
        h = w = int(round(x.shape[1] ** 0.5))
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def normalize(self, imgs01: torch.Tensor) -> torch.Tensor:
        return (imgs01 - self._mean) / self._std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._std + self._mean

    def forward_encoder(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Encode the kept patches. ``keep`` is (B, L) bool with the same count per row."""
        x = self.patch_embed(x) + self.pos_embed[:, 1:]
        b, l, d = x.shape
        n_keep = int(keep[0].sum())
        ids_keep = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :n_keep]
        x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, d))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_decoder(self, latent: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Predict every patch (B, L, p*p*C) from the latent of the kept ones."""
        x = self.decoder_embed(latent)
        b, l = keep.shape
        d = x.shape[2]
        ids_shuffle = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, l + 1 - x.shape[1], -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, d))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward(self, imgs01: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss over the dropped patches, predicted patches) for images in [0, 1] and a mask."""
        x = self.normalize(imgs01)
        pred = self.forward_decoder(self.forward_encoder(x, keep), keep)
        target = self.patchify(x)
        dropped = (~keep).float()
        loss = (((pred - target) ** 2).mean(-1) * dropped).sum() / dropped.sum().clamp(min=1)
        return loss, pred

    @torch.no_grad()
    def reconstruct(self, imgs01: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] with the dropped patches predicted and the kept ones pasted back."""
        _, pred = self(imgs01, keep)
        full = self.denormalize(self.unpatchify(pred)).clamp(0, 1)
        p = self.config.patch_size
        keep_px = keep.view(keep.shape[0], 1, self.config.grid, self.config.grid).float()
        keep_px = keep_px.repeat_interleave(p, 2).repeat_interleave(p, 3)
        return imgs01 * keep_px + full * (1 - keep_px)


def load_mae(path: str | Path, arch: str | None = None, map_location: str = "cpu") -> MaskedAutoencoderViT:
    """Load a MAE checkpoint from a local file (``torch.load(..., weights_only=True)``).

    Accepts the official files (``{"model": state_dict}``; the architecture is read from the
    shapes, ViT-B/16 or ViT-L/16, or given as ``arch``) and the files ``dsquant train-mae`` writes
    (``{"model": state_dict, "config": {...}}``).

    Raises:
        DataError: naming the file, if it is missing or unreadable, or holds objects other than
            tensors and plain containers (refused by ``weights_only=True``, not loaded).
        ValueError: if the file holds no decoder (an encoder-only pretrain checkpoint) or does
            not match a known layout.
    """
    from ..training import load_checkpoint

    path = Path(path)
    ckpt = load_checkpoint(path, "MAE checkpoint", map_location)
    try:
        return _mae_from_checkpoint(ckpt, arch)
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError, AssertionError) as exc:
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{path}: {msg}" if isinstance(exc, ValueError) else f"{path}: not a usable MAE checkpoint ({msg})") from None


def _mae_from_checkpoint(ckpt, arch: str | None) -> MaskedAutoencoderViT:
    """The model of a loaded checkpoint (see :func:`load_mae`); ValueError says what is wrong."""
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "patch_embed.proj.weight" not in state:
        raise ValueError("not a MAE checkpoint (no patch_embed.proj.weight)")
    if "decoder_pred.weight" not in state:
        raise ValueError("holds the encoder only (an official mae_pretrain_* file?); reconstruction needs the decoder: use a *_full or mae_visualize_* checkpoint")
    if isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict):
        config = MAEConfig.from_json(ckpt["config"])
    else:
        dim = state["patch_embed.proj.weight"].shape[0]
        depth = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()), default=-1)
        name = arch or {768: "vit_base_patch16", 1024: "vit_large_patch16"}.get(dim)
        if name not in OFFICIAL_CONFIGS or OFFICIAL_CONFIGS[name].depth != depth:
            raise ValueError(f"unknown MAE layout (embed dim {dim}, depth {depth})")
        config = OFFICIAL_CONFIGS[name]
    model = MaskedAutoencoderViT(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"state_dict does not match the MAE layout (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()
