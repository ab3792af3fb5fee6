"""SFM checkpoints <-> Flax params for `seisfuse.models.mae.MaskedAutoencoder` and for SFM's
fine-tuned downstream models (`seisfuse.models.sfm_heads`).

The config is inferred from tensor shapes (width, depth, patch, channels, image size from pos_embed,
decoder present or not); the head count is not visible in shapes, so it comes from the preset table
(or an explicit override). One key table per model (`key_table` for the MAE, `head_table` added
for a fine-tuned head; see `seisfuse.convert.common`) drives loading, export and the shape check.
`load_sfm` reads the encoder of any SFM file and reports the head keys it ignores;
`load_sfm_finetuned` reads a whole fine-tuned model.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from pathlib import Path
from typing import Any

import flax.linen as nn
import numpy as np

from seisfuse.convert.common import (
    KeyEntry,
    KeyTable,
    export_table,
    find_state_dict,
    float32,
    load_table,
    nested,
    report_unused,
    table_shapes,
    to_jax,
)
from seisfuse.convert.torch_format import (
    CheckpointError,
    Placeholder,
    read_torch_checkpoint,
    write_torch_checkpoint,
)
from seisfuse.models.layers import sincos_pos_embed_2d
from seisfuse.models.mae import MAE_PRESETS, MAEConfig
from seisfuse.models.sfm_heads import CUP_CHANNELS, CUP_SKIP_CHANNELS, SFMRegressor, SFMSegmenter

Params = dict[str, Any]


MAE_DECODER_HEADS = 16  # every MAE/SFM decoder preset's head count


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
        dheads = decoder_num_heads or _heads_for(dwidth, ddepth, decoder=True)
        if dheads is None:  # as the encoder, but MAE's decoders all use 16: the documented default
            dheads = MAE_DECODER_HEADS
            warnings.warn(f"no preset has decoder width {dwidth} and depth {ddepth}: assuming MAE's "
                          f"{MAE_DECODER_HEADS} decoder heads; pass decoder_num_heads "
                          "(--decoder-num-heads) if the model used another count", stacklevel=3)
        values.update(decoder=True, decoder_embed_dim=dwidth, decoder_depth=ddepth,
                      decoder_num_heads=dheads)
    table = sincos_pos_embed_2d(width, grid, grid)[None]
    values["learned_pos_embed"] = not np.allclose(float32(state["pos_embed"]), table, atol=1e-5)
    return MAEConfig(**values)


def _blocks(prefix: str, depth: int, width: int, heads: int, mlp_ratio: float) -> KeyTable:
    """timm Blocks `{prefix}.{i}` <-> Flax `{prefix}_{i}`."""
    hidden = int(width * mlp_ratio)
    table: KeyTable = []
    for i in range(depth):
        b, path = f"{prefix}.{i}", (f"{prefix}_{i}",)
        table += [KeyEntry(f"{b}.norm1", (*path, "norm1"), "norm", (width,)),
                  KeyEntry(f"{b}.attn.qkv", (*path, "attn"), "qkv", (3 * width, width), heads=heads),
                  KeyEntry(f"{b}.attn.proj", (*path, "attn", "out"), "attn_out", (width, width), heads=heads),
                  KeyEntry(f"{b}.norm2", (*path, "norm2"), "norm", (width,)),
                  KeyEntry(f"{b}.mlp.fc1", (*path, "mlp", "fc1"), "linear", (hidden, width)),
                  KeyEntry(f"{b}.mlp.fc2", (*path, "mlp", "fc2"), "linear", (width, hidden))]
    return table


def key_table(cfg: MAEConfig) -> KeyTable:
    """The MaskedAutoencoderViT's modules for `cfg`, in its state_dict's order (its own tensors
    first, then the submodules)."""
    d, p, tokens = cfg.embed_dim, cfg.patch_size, cfg.num_patches + 1
    table = [KeyEntry("cls_token", ("cls_token",), "raw", (1, 1, d)),
             KeyEntry("pos_embed", ("pos_embed",), "raw", (1, tokens, d))]
    if cfg.decoder:
        dd = cfg.decoder_embed_dim
        table += [KeyEntry("mask_token", ("mask_token",), "raw", (1, 1, dd)),
                  KeyEntry("decoder_pos_embed", ("decoder_pos_embed",), "raw", (1, tokens, dd))]
    table += [KeyEntry("patch_embed.proj", ("patch_embed",), "conv2d", (d, cfg.in_chans, p, p)),
              *_blocks("blocks", cfg.depth, d, cfg.num_heads, cfg.mlp_ratio),
              KeyEntry("norm", ("norm",), "norm", (d,))]
    if cfg.decoder:
        table += [KeyEntry("decoder_embed", ("decoder_embed",), "linear", (dd, d)),
                  *_blocks("decoder_blocks", cfg.decoder_depth, dd, cfg.decoder_num_heads, cfg.mlp_ratio),
                  KeyEntry("decoder_norm", ("decoder_norm",), "norm", (dd,)),
                  KeyEntry("decoder_pred", ("decoder_pred",), "linear", (cfg.patch_dim, dd))]
    return table


def expected_shapes(cfg: MAEConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key the original model has for this config, with its shape."""
    return table_shapes(key_table(cfg))


def state_dict_to_params(state: dict[str, Any], cfg: MAEConfig) -> tuple[Params, list[str]]:
    """Convert an SFM state_dict for `cfg`; returns (params, unused keys). Shapes are checked first."""
    variables, unused = load_table(state, key_table(cfg), "SFM", owned=())
    return variables["params"], unused


def load_sfm(path: str | Path, *, num_heads: int | None = None,
             decoder_num_heads: int | None = None) -> tuple[MAEConfig, Params]:
    """Read an SFM .pth (pretraining with/without decoder, or fine-tuned) safely, without torch.

    Returns (MAEConfig, params) with params as float32 jax arrays for `MaskedAutoencoder(cfg)`.
    Keys the model does not use (fine-tuning heads) are reported with a warning.
    """
    return sfm_from_checkpoint(read_torch_checkpoint(path), path, num_heads=num_heads,
                               decoder_num_heads=decoder_num_heads)


def sfm_from_checkpoint(checkpoint: Any, source: Any, *, num_heads: int | None = None,
                        decoder_num_heads: int | None = None) -> tuple[MAEConfig, Params]:
    """`load_sfm` on a checkpoint already read; `source` names it in warnings."""
    state = find_state_dict(checkpoint, ("model", "state_dict"))
    cfg = infer_config(state, num_heads, decoder_num_heads)
    params, unused = state_dict_to_params(state, cfg)
    report_unused("load_sfm", source, unused, "the MAE")
    return cfg, to_jax(params)


def params_to_state_dict(params: Params, cfg: MAEConfig) -> dict[str, np.ndarray]:
    """The original MaskedAutoencoderViT state_dict (same key order) for these params."""
    return export_table({"params": params}, key_table(cfg), "SFM")


def export_sfm(params: Params, cfg: MAEConfig, path: str | Path) -> None:
    """Write {'model': state_dict} like SFM's save_model; loads with torch.load + strict=True."""
    write_torch_checkpoint(path, {"model": params_to_state_dict(params, cfg),
                                  "seisfuse_config": dataclasses.asdict(cfg)})


# ----------------------------------------------------------------- fine-tuned downstream models

FineTuned = SFMSegmenter | SFMRegressor

# SFM's factory names: (width, depth, patch, heads); the head count is in no tensor.
FACTORIES: dict[str, tuple[int, int, int, int]] = {
    "mae_vit_small_patch16": (768, 6, 16, 12),
    "vit_base_patch16": (768, 12, 16, 12),
    "vit_large_patch16": (1024, 24, 16, 16),
    "vit_huge_patch14": (1280, 32, 14, 16),
}
SEGMENT_KEY, REGRESS_KEY = "decoder.cls.weight", "decoder.conv_more.0.weight"


def _conv_bn(torch_conv: str, torch_bn: str, path: tuple[str, ...], out: int, inp: int) -> KeyTable:
    return [KeyEntry(torch_conv, (*path, "conv"), "conv2d", (out, inp, 3, 3), bias=False),
            KeyEntry(torch_bn, (*path, "bn"), "bn", (out,))]


def head_table(model: FineTuned) -> KeyTable:
    """Every head module of `model` with its torch key, in the original state_dict's order."""
    d = model.cfg.embed_dim
    if isinstance(model, SFMSegmenter):
        hc, classes = model.head_channels, model.num_classes
        table = [KeyEntry("head", ("head",), "linear", (classes, d))]
        for k in range(2, 6):
            prefix = f"decoder.mlahead.head{k}"
            table += _conv_bn(f"{prefix}.0", f"{prefix}.1", ("decoder", f"head{k}_0"), hc, d)
            table += _conv_bn(f"{prefix}.3", f"{prefix}.4", ("decoder", f"head{k}_1"), hc, hc)
        return table + [KeyEntry("decoder.cls", ("decoder", "cls"), "conv2d", (classes, 4 * hc, 3, 3)),
                        KeyEntry("segmentation_head.0", ("segmentation_head",), "conv2d",
                                 (classes, 16, 3, 3))]
    out, channels, skip = model.out_channels, tuple(model.decoder_channels), model.skip_channels
    table = [KeyEntry("head", ("head",), "linear", (out, d)),
             *_conv_bn("decoder.conv_more.0", "decoder.conv_more.1", ("decoder", "conv_more"),
                       skip, model.cfg.in_chans)]
    inputs = (d, *channels[:-1])
    for i, (inp, features) in enumerate(zip(inputs, channels, strict=True)):
        inp += skip if i == len(channels) - 1 else 0
        for j, width in ((1, inp), (2, features)):
            prefix, path = f"decoder.blocks.{i}.conv{j}", ("decoder", f"blocks_{i}_conv{j}")
            table += _conv_bn(f"{prefix}.0", f"{prefix}.1", path, features, width)
    return table + [KeyEntry("segmentation_head.0", ("segmentation_head",), "conv2d",
                             (out, channels[-1], 1, 1))]


def finetuned_key_table(model: FineTuned) -> KeyTable:
    """The whole fine-tuned model: its encoder (Flax `encoder`), then the head."""
    return nested(key_table(dataclasses.replace(model.cfg, decoder=False)), ("encoder",)) + head_table(model)


def finetuned_expected_shapes(model: FineTuned) -> dict[str, tuple[int, ...]]:
    """Every key of the original fine-tuned model's state_dict (bar num_batches_tracked), with shapes."""
    return table_shapes(finetuned_key_table(model))


def _training_args(checkpoint: Any) -> dict[str, Any]:
    """The fields of the argparse.Namespace SFM's save_model pickles under 'args' ({} if none).

    The safe reader turns the Namespace into an inert Placeholder whose `state` is its __dict__;
    anything else under 'args' is ignored.
    """
    args = checkpoint.get("args") if isinstance(checkpoint, dict) else None
    if (isinstance(args, Placeholder) and (args.module, args.qualname) == ("argparse", "Namespace")
            and isinstance(args.state, dict)):
        return {k: v for k, v in args.state.items() if isinstance(k, str)}
    return {}


def _resolve_heads(checkpoint: Any, state: dict[str, Any], num_heads: int | None) -> int | None:
    """Head count: explicit, else the factory named in args.model (checked against the tensors),
    else a seisfuse export's config; None leaves it to the presets (`infer_config`)."""
    if num_heads is not None:
        return num_heads
    factory = _training_args(checkpoint).get("model")
    embed = np.shape(state.get("patch_embed.proj.weight"))
    if isinstance(factory, str) and factory in FACTORIES and len(embed) == 4:
        width, depth, patch, heads = FACTORIES[factory]
        found = (embed[0], _count_blocks(state, "blocks"), embed[-1])
        if found != (width, depth, patch):
            raise CheckpointError(
                f"args.model is {factory!r} (width {width}, depth {depth}, patch {patch}) but the tensors "
                f"have width {found[0]}, depth {found[1]}, patch {found[2]}: pass num_heads explicitly")
        return heads
    encoder = _saved_config(checkpoint).get("encoder")
    heads = encoder.get("num_heads") if isinstance(encoder, dict) else None
    return heads if isinstance(heads, int) and not isinstance(heads, bool) and heads > 0 else None


def _saved_config(checkpoint: Any) -> dict[str, Any]:
    """The `finetuned_model_config` an `export_sfm_finetuned` file carries ({} if none)."""
    saved = checkpoint.get("seisfuse_config") if isinstance(checkpoint, dict) else None
    return saved if isinstance(saved, dict) else {}


def _drop_path(checkpoint: Any) -> float:
    """The fine-tuning run's drop-path rate (args.drop_path, or a seisfuse export's), when valid, else 0.
    It only matters if the model is trained further."""
    rate = _training_args(checkpoint).get("drop_path", _saved_config(checkpoint).get("drop_path_rate"))
    return float(rate) if isinstance(rate, float) and 0.0 <= rate < 1.0 else 0.0


def _check_finetuned(state: dict[str, Any]) -> None:
    if SEGMENT_KEY not in state and REGRESS_KEY not in state:
        raise CheckpointError(f"not a fine-tuned SFM checkpoint: neither {SEGMENT_KEY} (segmentation) nor "
                              f"{REGRESS_KEY} (regression) is present; for a pretrained file use load_sfm")
    for key in (SEGMENT_KEY, "decoder.mlahead.head2.0.weight", REGRESS_KEY, "segmentation_head.0.weight"):
        if key in state and np.ndim(state[key]) != 4:
            raise CheckpointError(f"{key} must be a 4-D conv weight, got shape {np.shape(state[key])}")


def _build_model(state: dict[str, Any], cfg: MAEConfig, drop_path_rate: float) -> FineTuned:
    """The head the tensors describe: classes, head width, out channels read off the weights."""
    try:
        if SEGMENT_KEY in state:
            head = state.get("decoder.mlahead.head2.0.weight")
            return SFMSegmenter(cfg, num_classes=np.shape(state[SEGMENT_KEY])[0],
                                head_channels=128 if head is None else np.shape(head)[0],
                                drop_path_rate=drop_path_rate)
        out = state.get("segmentation_head.0.weight")
        widths = [state.get(f"decoder.blocks.{i}.conv2.0.weight") for i in range(len(CUP_CHANNELS))]
        skip = state.get("decoder.conv_more.0.weight")
        return SFMRegressor(cfg, out_channels=1 if out is None else np.shape(out)[0],
                            drop_path_rate=drop_path_rate,
                            decoder_channels=tuple(CUP_CHANNELS[i] if w is None else int(np.shape(w)[0])
                                                   for i, w in enumerate(widths)),
                            skip_channels=CUP_SKIP_CHANNELS if skip is None else int(np.shape(skip)[0]))
    except ValueError as exc:
        raise CheckpointError(f"the checkpoint's model cannot be built: {exc}") from exc


def load_sfm_finetuned(path: str | Path, *, num_heads: int | None = None) -> tuple[FineTuned, Params]:
    """Read a fine-tuned SFM .pth (facies/salt segmentation or denoise/reflectivity/interpolation
    regression) safely, without torch: (model, {"params", "batch_stats"} as jax arrays).

    `model.apply(variables, images)` with NHWC images [B, H, W, C] at the file's size is the
    original forward in eval mode, channels-last. The task and all sizes come from the tensors; the
    head count from `num_heads`, else the factory name in the file's args, else the presets.
    Missing, mis-shaped or unexpected keys raise CheckpointError listing them.
    """
    return sfm_finetuned_from_checkpoint(read_torch_checkpoint(path), num_heads=num_heads)


def is_sfm_finetuned(checkpoint: Any) -> bool:
    """Whether a checkpoint read by `read_torch_checkpoint` holds a fine-tuned SFM head."""
    state = find_state_dict(checkpoint, ("model", "state_dict"))
    return SEGMENT_KEY in state or REGRESS_KEY in state


def sfm_finetuned_from_checkpoint(checkpoint: Any, *, num_heads: int | None = None
                                  ) -> tuple[FineTuned, Params]:
    """`load_sfm_finetuned` on a checkpoint already read (one read when the caller inspects it)."""
    state = find_state_dict(checkpoint, ("model", "state_dict"))
    _check_finetuned(state)
    cfg = infer_config(state, _resolve_heads(checkpoint, state, num_heads))
    cfg = dataclasses.replace(cfg, learned_pos_embed=True)  # timm's pos_embed is a trained parameter
    model = _build_model(state, cfg, _drop_path(checkpoint))
    variables, _ = load_table(state, finetuned_key_table(model), "SFM fine-tuned")
    return model, to_jax(variables)


def finetuned_state_dict(model: FineTuned, variables: Params) -> dict[str, np.ndarray]:
    """The original fine-tuned model's state_dict (same keys, order and layout) for these variables."""
    variables = nn.unbox(variables)
    if "params" not in variables or "batch_stats" not in variables:
        raise ValueError(f"export needs variables with 'params' and 'batch_stats' (the BatchNorm running "
                         f"statistics), got {sorted(variables)}")
    return export_table(variables, finetuned_key_table(model), f"SFM {type(model).__name__}")


def export_sfm_finetuned(model: FineTuned, variables: Params, path: str | Path) -> None:
    """Write {'model': state_dict} that loads with load_state_dict(strict=True) into SFM's fine-tuned
    VisionTransformer (segmentation or regression), plus this model's config for seisfuse."""
    write_torch_checkpoint(path, {"model": finetuned_state_dict(model, variables),
                                  "seisfuse_config": finetuned_model_config(model)})


def finetuned_model_config(model: FineTuned) -> dict[str, Any]:
    """JSON-able description of a fine-tuned model, rebuilt by `finetuned_model_from_config`."""
    base = {"encoder": model.cfg.to_dict(), "drop_path_rate": model.drop_path_rate}
    if isinstance(model, SFMSegmenter):
        return {"task": "segment", **base, "num_classes": model.num_classes,
                "head_channels": model.head_channels}
    if isinstance(model, SFMRegressor):
        return {"task": "regress", **base, "out_channels": model.out_channels,
                "decoder_channels": list(model.decoder_channels), "skip_channels": model.skip_channels}
    raise TypeError(f"expected an SFMSegmenter or SFMRegressor, got {type(model).__name__}")


def finetuned_model_from_config(config: dict[str, Any]) -> FineTuned:
    """The model `finetuned_model_config` described (ValueError naming what is wrong)."""
    fields = {"segment": {"num_classes", "head_channels"},
              "regress": {"out_channels", "decoder_channels", "skip_channels"}}
    task = config.get("task")
    if task not in fields:
        raise ValueError(f"fine-tuned SFM config: task must be 'segment' or 'regress', got {task!r}")
    expected = {"task", "encoder", "drop_path_rate"} | fields[task]
    if set(config) != expected:
        raise ValueError(f"fine-tuned SFM config for {task!r}: expected keys {sorted(expected)}, "
                         f"got {sorted(config)}")
    extra = {k: tuple(config[k]) if isinstance(config[k], list) else config[k] for k in fields[task]}
    cls = SFMSegmenter if task == "segment" else SFMRegressor
    return cls(MAEConfig.from_dict(config["encoder"]), drop_path_rate=config["drop_path_rate"], **extra)
