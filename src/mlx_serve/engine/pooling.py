"""Pooling token states into one vector, and L2 normalisation, as sentence-transformers does them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mlx.core as mx

Mode = Literal["mean", "cls", "last", "max"]


@dataclass(frozen=True)
class PoolingConfig:
    mode: Mode
    normalize: bool

    @classmethod
    def from_sentence_transformers(cls, model_dir: Path, default: Mode = "mean") -> PoolingConfig:
        """Read modules.json and the Pooling module's config; without them, `default` and normalise."""
        modules_file = model_dir / "modules.json"
        if not modules_file.exists():
            return cls(default, True)
        modules = json.loads(modules_file.read_text())
        mode: Mode = default
        normalize = False
        for module in modules:
            module_class = module.get("type", "")
            if module_class.endswith("Pooling"):
                cfg_file = model_dir / module.get("path", "") / "config.json"
                if cfg_file.exists():
                    mode = _mode_from(json.loads(cfg_file.read_text()), default)
            elif module_class.endswith("Normalize"):
                normalize = True
        return cls(mode, normalize)


def _mode_from(cfg: dict, default: Mode) -> Mode:
    if "pooling_mode" in cfg:  # newer sentence-transformers write the mode by name
        return {"mean": "mean", "cls": "cls", "lasttoken": "last", "max": "max"}.get(cfg["pooling_mode"], default)
    for key, mode in (
        ("pooling_mode_cls_token", "cls"),
        ("pooling_mode_mean_tokens", "mean"),
        ("pooling_mode_lasttoken", "last"),
        ("pooling_mode_max_tokens", "max"),
    ):
        if cfg.get(key):
            return mode  # type: ignore[return-value]
    return default


def pool(hidden: mx.array, mask: mx.array, mode: Mode) -> mx.array:
    """hidden (B, L, D) of a right-padded batch; mask (B, L) of 1/0. Always float32: a sum of 512
    float16 values, or the norm of a vector whose norm passes 256 (its square passes float16's 65504),
    overflows, and the answer would be an all-zero or NaN vector with status 200."""
    if mode == "last":
        last = mask.sum(axis=1) - 1
        return mx.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0].astype(mx.float32)
    if mode == "cls":
        return hidden[:, 0].astype(mx.float32)
    hidden = hidden.astype(mx.float32)
    m = mask[..., None].astype(mx.float32)
    if mode == "max":
        return mx.max(mx.where(m > 0, hidden, mx.array(-1e9, mx.float32)), axis=1)
    return (hidden * m).sum(axis=1) / mx.maximum(m.sum(axis=1), 1e-9)


def l2_normalize(x: mx.array) -> mx.array:
    # In float32 (see pool); the same epsilon as torch.nn.functional.normalize, which sentence-transformers uses.
    x = x.astype(mx.float32)
    return x / mx.maximum(mx.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
