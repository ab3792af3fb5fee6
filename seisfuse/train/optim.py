"""optax optimizers that reproduce each original's parameter groups and schedules.

Every task labels its params 'decay' / 'no_decay' / 'frozen'; a label with the suffix DELAYED
('decay:delayed', 'no_decay:delayed') freezes that group until `delay_steps`, then trains it (SeisLM's
fine-tuning unfreezes its base at epoch N). One decay rule serves every task (`decay_label`, timm's
add_weight_decay): no weight decay on 1-D parameters and biases. SFM's fixed sin-cos position tables
are not trained (requires_grad=False in PyTorch), so they get no optimizer state and no update here
either; the joint model's freezing policies ('all', 'none', 'last:K') become 'frozen' labels too.
Torch's AdamW decays p by lr·wd before the Adam step; optax's adamw adds wd·p to the Adam update
before scaling by -lr: the same update.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.traverse_util import path_aware_map

from seisfuse.models.joint import TOWER_KINDS, JointConfig

FIXED_POSITION_TABLES = ("pos_embed", "decoder_pos_embed")


def decay_label(path: tuple[str, ...], leaf: jax.Array) -> str:
    """The one weight-decay rule (timm's add_weight_decay): 'no_decay' for 1-D params (norms,
    BatchNorm affine) and biases, 'decay' for the rest."""
    return "no_decay" if leaf.ndim <= 1 or path[-1] == "bias" else "decay"


def _mae_label(path: tuple[str, ...], leaf: jax.Array, learned_pos_embed: bool) -> str:
    if path[-1] in FIXED_POSITION_TABLES and not learned_pos_embed:
        return "frozen"  # a fixed sin-cos table (requires_grad=False in SFM)
    return decay_label(path, leaf)


def mae_param_labels(params: Any, learned_pos_embed: bool = False) -> Any:
    """'frozen' for fixed position tables, 'decay' for matrices, 'no_decay' for 1-D params and biases."""
    return path_aware_map(lambda path, leaf: _mae_label(path, leaf, learned_pos_embed), params)


def parse_trainable(policy: str | int, depth: int) -> int:
    """Freezing policy -> how many of the last blocks train: 'all' (depth), 'none' (0), 'last:K', or K."""
    if policy == "all":
        return depth
    if policy == "none":
        return 0
    text = str(policy).removeprefix("last:")
    if not text.isdigit():
        raise ValueError(f"freezing policy must be 'all', 'none' or 'last:K', got {policy!r}")
    k = int(text)
    if k > depth:
        raise ValueError(f"freezing policy {policy!r} asks for {k} blocks but the tower has {depth}")
    return k


def joint_param_labels(cfg: JointConfig, params: Any, trainable: Mapping[str, str | int]) -> Any:
    """'decay' / 'no_decay' / 'frozen' per parameter of a JointEmbedding under per-modality freezing.

    trainable[modality] is 'all', 'none' (LiT-style: a frozen tower, only its head trains) or
    'last:K' (the last K blocks and the final norm train). Modalities left out train fully.
    Heads and the loss parameters always train; the decay rule is `decay_label`'s, and SFM's fixed
    sin-cos position tables are always frozen.
    """
    unknown = set(trainable) - set(cfg.modalities)
    if unknown:
        raise ValueError(f"freezing policies for unknown modalities {sorted(unknown)}; "
                         f"this model has {list(cfg.modalities)}")
    keep = {}
    for t in cfg.towers:
        kind = TOWER_KINDS[t.kind]
        depth = kind.depth(t.backbone)
        keep[t.modality] = (kind, t.backbone, depth, parse_trainable(trainable.get(t.modality, "all"), depth))

    def label(path: tuple[str, ...], leaf: jax.Array) -> str:
        if path[0] not in keep or path[1] != "backbone":
            return decay_label(path, leaf)
        kind, backbone, depth, k = keep[path[0]]
        default = _mae_label(path, leaf, getattr(backbone, "learned_pos_embed", True))
        if default == "frozen" or k == depth:
            return default
        inner = path[3:]  # {modality}/backbone/encoder/...
        block = kind.block(inner)
        trains = (block is not None and block >= depth - k) or (k > 0 and kind.is_final_norm(inner, backbone))
        return default if trains else "frozen"

    return path_aware_map(label, params)


def mae_layer_scales(params: Any, depth: int, layer_decay: float) -> Any:
    """Layer-wise lr decay of MAE fine-tuning: embeddings id 0, blocks_i id i+1, the rest depth+1.

    A parameter of layer id k is scaled by layer_decay^(depth + 1 - k).
    """

    def scale(path: tuple[str, ...], _: jax.Array) -> float:
        top = path[0]
        if top in ("cls_token", "pos_embed", "patch_embed"):
            layer = 0
        elif match := re.fullmatch(r"blocks_(\d+)", top):
            layer = int(match.group(1)) + 1
        else:
            layer = depth + 1
        return layer_decay ** (depth + 1 - layer)

    return path_aware_map(scale, params)


def warmup_cosine(peak_lr: float, warmup_steps: int, total_steps: int, end_lr: float = 0.0) -> optax.Schedule:
    """Linear warm-up from 0 to peak_lr, then half-cosine to end_lr at total_steps (all originals)."""
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must be in [0, total_steps={total_steps})")
    return optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup_steps, total_steps, end_lr)


def cosine_anneal(step: jax.Array, total_steps: int, start: float, end: float) -> jax.Array:
    """Half-cosine from start to end over total_steps (SeisLM's Gumbel temperature 2.0 -> 0.5)."""
    progress = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
    return end + (start - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress))


DELAYED = ":delayed"


def delayed(inner: optax.GradientTransformation, start_step: int) -> optax.GradientTransformation:
    """`inner` from step `start_step` on; before it, zero updates and `inner`'s state left untouched,
    as for a PyTorch parameter with requires_grad=False (its Adam moments start at unfreezing)."""

    def init(params: Any) -> tuple[jax.Array, Any]:
        return jnp.zeros((), jnp.int32), inner.init(params)

    def update(updates: Any, state: tuple[jax.Array, Any], params: Any = None) -> tuple[Any, Any]:
        count, inner_state = state
        new_updates, new_inner = inner.update(updates, inner_state, params)
        active = count >= start_step
        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)  # noqa: E731
        zeros = jax.tree.map(jnp.zeros_like, updates)
        return pick(new_updates, zeros), (count + 1, pick(new_inner, inner_state))

    return optax.GradientTransformation(init, update)


def scale_by_tree(scales: Any) -> optax.GradientTransformation:
    """Multiply each update by a fixed per-parameter factor (e.g. layer-wise lr decay)."""
    return optax.stateless(lambda updates, _params: jax.tree.map(jnp.multiply, updates, scales))


def adamw(schedule: optax.Schedule | float, labels: Any, *, weight_decay: float, b1: float = 0.9,
          b2: float = 0.999, eps: float = 1e-8, clip_norm: float | None = None,
          layer_scales: Any = None, delay_steps: int = 0) -> optax.GradientTransformation:
    """AdamW over labelled groups: global-norm clipping, Adam, decoupled decay on 'decay' only,
    optional per-parameter lr scales, then the learning-rate schedule. 'frozen' params get no state;
    'decay:delayed' / 'no_decay:delayed' params are frozen for the first `delay_steps` steps."""
    groups = {"decay": optax.chain(optax.scale_by_adam(b1, b2, eps), optax.add_decayed_weights(weight_decay)),
              "no_decay": optax.scale_by_adam(b1, b2, eps)}
    groups.update({name + DELAYED: delayed(group, delay_steps) for name, group in list(groups.items())})
    used = set(jax.tree.leaves(labels))
    unknown = used - set(groups) - {"frozen"}
    if unknown:
        raise ValueError(f"unknown optimizer labels {sorted(unknown)}")
    chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    chain.append(optax.multi_transform(
        {**{name: groups[name] for name in groups if name in used}, "frozen": optax.set_to_zero()}, labels))
    if layer_scales is not None:
        chain.append(scale_by_tree(layer_scales))
    chain.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*chain)


def mae_adamw(learning_rate: float | optax.Schedule, params: Any, *, weight_decay: float = 0.05,
              b1: float = 0.9, b2: float = 0.95, eps: float = 1e-8,
              learned_pos_embed: bool = False) -> optax.GradientTransformation:
    """SFM's pretraining AdamW (betas .9/.95, wd .05 on matrices only, fixed tables untouched)."""
    return adamw(learning_rate, mae_param_labels(params, learned_pos_embed),
                 weight_decay=weight_decay, b1=b1, b2=b2, eps=eps)


def optimizer_from_config(opt: Mapping[str, Any], labels: Any, total_steps: int,
                          layer_scales: Any = None) -> optax.GradientTransformation:
    """Build `adamw` from an experiment config's `optimizer` section."""
    schedule = warmup_cosine(opt["lr"], opt["warmup_steps"], total_steps, opt.get("end_lr", 0.0))
    return adamw(schedule, labels, weight_decay=opt["weight_decay"], b1=opt["b1"], b2=opt["b2"],
                 eps=opt["eps"], clip_norm=opt["clip_norm"] or None, layer_scales=layer_scales,
                 delay_steps=opt["unfreeze_step"])
