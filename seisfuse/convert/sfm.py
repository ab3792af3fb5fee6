"""SFM checkpoints <-> Flax params for `seisfuse.models.mae.MaskedAutoencoder`.

The config is inferred from tensor shapes (width, depth, patch, channels, image size from pos_embed,
decoder present or not); the head count is not visible in shapes, so it comes from the preset table
(or an explicit override). Fine-tuned files load their encoder and report the head keys they carry.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from seisfuse.convert.common import (
    check_state_dict,
    find_state_dict,
    float32,
    linear,
    linear_back,
    norm,
    norm_back,
    report_unused,
    to_jax,
)
from seisfuse.convert.torch_format import CheckpointError, read_torch_checkpoint, write_torch_checkpoint
from seisfuse.models.layers import sincos_pos_embed_2d
from seisfuse.models.mae import MAE_PRESETS, MAEConfig

Params = dict[str, Any]


def _heads_for(width: int, depth: int, decoder: bool) -> int | None:
    """Head count of the preset with this (width, depth), encoder or decoder side."""
    for cfg in MAE_PRESETS.values():
        if decoder and (cfg.decoder_embed_dim, cfg.decoder_depth) == (width, depth):
            return cfg.decoder_num_heads
        if not decoder and (cfg.embed_dim, cfg.depth) == (width, depth):
            return cfg.num_heads
    return None


def _count_blocks(state: dict[str, Any], prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}\.(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def infer_config(state: dict[str, Any], num_heads: int | None = None,
                 decoder_num_heads: int | None = None) -> MAEConfig:
    """MAEConfig from state-dict shapes; raises CheckpointError when the core keys are absent."""
    core = ["patch_embed.proj.weight", "pos_embed"]
    absent = [k for k in core if k not in state]
    if absent:
        raise CheckpointError(f"not an SFM/MAE checkpoint: missing {', '.join(absent)}")
    width, chans, patch, _ = np.shape(state["patch_embed.proj.weight"])
    tokens = np.shape(state["pos_embed"])[1] - 1
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise CheckpointError(f"pos_embed has {tokens} patch tokens, not a square grid")
    depth = _count_blocks(state, "blocks")
    heads = num_heads or _heads_for(width, depth, decoder=False)
    if heads is None:
        raise CheckpointError(f"no preset has encoder width {width} and depth {depth}: "
                              "pass num_heads explicitly")
    values: dict[str, Any] = dict(img_size=grid * patch, patch_size=patch, in_chans=chans,
                                  embed_dim=width, depth=depth, num_heads=heads, decoder=False)
    if "decoder_embed.weight" in state:
        dwidth = np.shape(state["decoder_embed.weight"])[0]
        ddepth = _count_blocks(state, "decoder_blocks")
        dheads = decoder_num_heads or _heads_for(dwidth, ddepth, decoder=True) or 16
        values.update(decoder=True, decoder_embed_dim=dwidth, decoder_depth=ddepth,
                      decoder_num_heads=dheads)
    table = sincos_pos_embed_2d(width, grid, grid)[None]
    values["learned_pos_embed"] = not np.allclose(float32(state["pos_embed"]), table, atol=1e-5)
    return MAEConfig(**values)


def expected_shapes(cfg: MAEConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key the original model has for this config, with its shape."""
    d, p, tokens = cfg.embed_dim, cfg.patch_size, cfg.num_patches + 1
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, d), "pos_embed": (1, tokens, d),
        "patch_embed.proj.weight": (d, cfg.in_chans, p, p), "patch_embed.proj.bias": (d,),
        "norm.weight": (d,), "norm.bias": (d,),
    }
    blocks = [("blocks", cfg.depth, d, cfg.mlp_ratio)]
    if cfg.decoder:
        dd = cfg.decoder_embed_dim
        shapes.update({"decoder_embed.weight": (dd, d), "decoder_embed.bias": (dd,),
                       "mask_token": (1, 1, dd), "decoder_pos_embed": (1, tokens, dd),
                       "decoder_norm.weight": (dd,), "decoder_norm.bias": (dd,),
                       "decoder_pred.weight": (cfg.patch_dim, dd), "decoder_pred.bias": (cfg.patch_dim,)})
        blocks.append(("decoder_blocks", cfg.decoder_depth, dd, cfg.mlp_ratio))
    for prefix, depth, width, ratio in blocks:
        hidden = int(width * ratio)
        for i in range(depth):
            b = f"{prefix}.{i}"
            shapes.update({
                f"{b}.norm1.weight": (width,), f"{b}.norm1.bias": (width,),
                f"{b}.attn.qkv.weight": (3 * width, width), f"{b}.attn.qkv.bias": (3 * width,),
                f"{b}.attn.proj.weight": (width, width), f"{b}.attn.proj.bias": (width,),
                f"{b}.norm2.weight": (width,), f"{b}.norm2.bias": (width,),
                f"{b}.mlp.fc1.weight": (hidden, width), f"{b}.mlp.fc1.bias": (hidden,),
                f"{b}.mlp.fc2.weight": (width, hidden), f"{b}.mlp.fc2.bias": (width,),
            })
    return shapes


# ----------------------------------------------------------------- torch -> flax




def _block(state: dict[str, Any], key: str, heads: int) -> Params:
    qkv_w, qkv_b = float32(state[f"{key}.attn.qkv.weight"]), float32(state[f"{key}.attn.qkv.bias"])
    width = qkv_w.shape[1]
    attn = {
        name: {"kernel": w.T.reshape(width, heads, width // heads), "bias": b.reshape(heads, -1)}
        for name, w, b in zip(("query", "key", "value"), np.split(qkv_w, 3), np.split(qkv_b, 3),
                              strict=True)
    }
    proj = linear(state, f"{key}.attn.proj")
    attn["out"] = {"kernel": proj["kernel"].reshape(heads, width // heads, width), "bias": proj["bias"]}
    return {"norm1": norm(state, f"{key}.norm1"), "attn": attn, "norm2": norm(state, f"{key}.norm2"),
            "mlp": {"fc1": linear(state, f"{key}.mlp.fc1"), "fc2": linear(state, f"{key}.mlp.fc2")}}


def state_dict_to_params(state: dict[str, Any], cfg: MAEConfig) -> tuple[Params, list[str]]:
    """Convert an SFM state_dict for `cfg`; returns (params, unused keys). Shapes are checked first."""
    unused = check_state_dict(state, expected_shapes(cfg), "SFM")
    params: Params = {
        "cls_token": float32(state["cls_token"]),
        "pos_embed": float32(state["pos_embed"]),
        "patch_embed": {"kernel": float32(state["patch_embed.proj.weight"]).transpose(2, 3, 1, 0),
                        "bias": float32(state["patch_embed.proj.bias"])},
        "norm": norm(state, "norm"),
    }
    for i in range(cfg.depth):
        params[f"blocks_{i}"] = _block(state, f"blocks.{i}", cfg.num_heads)
    if cfg.decoder:
        params.update({"decoder_embed": linear(state, "decoder_embed"),
                       "mask_token": float32(state["mask_token"]),
                       "decoder_pos_embed": float32(state["decoder_pos_embed"]),
                       "decoder_norm": norm(state, "decoder_norm"),
                       "decoder_pred": linear(state, "decoder_pred")})
        for j in range(cfg.decoder_depth):
            params[f"decoder_blocks_{j}"] = _block(state, f"decoder_blocks.{j}", cfg.decoder_num_heads)
    return params, unused


def load_sfm(path: str | Path, *, num_heads: int | None = None,
             decoder_num_heads: int | None = None) -> tuple[MAEConfig, Params]:
    """Read an SFM .pth (pretraining with/without decoder, or fine-tuned) safely, without torch.

    Returns (MAEConfig, params) with params as float32 jax arrays for `MaskedAutoencoder(cfg)`.
    Keys the model does not use (fine-tuning heads) are reported with a warning.
    """
    state = find_state_dict(read_torch_checkpoint(path), ("model", "state_dict"))
    cfg = infer_config(state, num_heads, decoder_num_heads)
    params, unused = state_dict_to_params(state, cfg)
    report_unused("load_sfm", path, unused, "the MAE")
    return cfg, to_jax(params)



# ----------------------------------------------------------------- flax -> torch




def _block_back(p: Params, key: str) -> dict[str, np.ndarray]:
    attn = p["attn"]
    width = np.shape(attn["query"]["kernel"])[0]
    qkv_w = np.concatenate([np.asarray(attn[n]["kernel"]).reshape(width, width).T
                            for n in ("query", "key", "value")])
    qkv_b = np.concatenate([np.asarray(attn[n]["bias"]).reshape(-1) for n in ("query", "key", "value")])
    out = {"kernel": np.asarray(attn["out"]["kernel"]).reshape(width, width), "bias": attn["out"]["bias"]}
    return {**norm_back(p["norm1"], f"{key}.norm1"),
            f"{key}.attn.qkv.weight": qkv_w, f"{key}.attn.qkv.bias": qkv_b,
            **linear_back(out, f"{key}.attn.proj"), **norm_back(p["norm2"], f"{key}.norm2"),
            **linear_back(p["mlp"]["fc1"], f"{key}.mlp.fc1"),
            **linear_back(p["mlp"]["fc2"], f"{key}.mlp.fc2")}


def params_to_state_dict(params: Params, cfg: MAEConfig) -> dict[str, np.ndarray]:
    """The original MaskedAutoencoderViT state_dict (same key order) for these params."""
    sd: dict[str, np.ndarray] = {
        "cls_token": np.asarray(params["cls_token"]), "pos_embed": np.asarray(params["pos_embed"]),
        "patch_embed.proj.weight": np.asarray(params["patch_embed"]["kernel"]).transpose(3, 2, 0, 1),
        "patch_embed.proj.bias": np.asarray(params["patch_embed"]["bias"]),
    }
    for i in range(cfg.depth):
        sd.update(_block_back(params[f"blocks_{i}"], f"blocks.{i}"))
    sd.update(norm_back(params["norm"], "norm"))
    if cfg.decoder:
        sd.update(linear_back(params["decoder_embed"], "decoder_embed"))
        sd["mask_token"] = np.asarray(params["mask_token"])
        sd["decoder_pos_embed"] = np.asarray(params["decoder_pos_embed"])
        for j in range(cfg.decoder_depth):
            sd.update(_block_back(params[f"decoder_blocks_{j}"], f"decoder_blocks.{j}"))
        sd.update(norm_back(params["decoder_norm"], "decoder_norm"))
        sd.update(linear_back(params["decoder_pred"], "decoder_pred"))
    check_state_dict(sd, expected_shapes(cfg), "SFM export")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def export_sfm(params: Params, cfg: MAEConfig, path: str | Path) -> None:
    """Write {'model': state_dict} like SFM's save_model; loads with torch.load + strict=True."""
    write_torch_checkpoint(path, {"model": params_to_state_dict(params, cfg),
                                  "seisfuse_config": dataclasses.asdict(cfg)})
