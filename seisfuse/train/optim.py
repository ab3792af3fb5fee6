"""optax optimizers that reproduce each original's parameter groups.

SFM/MAE (timm's add_weight_decay): no weight decay on 1-D parameters and biases; the fixed sin-cos
position tables are not trained at all (requires_grad=False in PyTorch), so they get no optimizer
state and no update here either.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from flax.traverse_util import path_aware_map

FIXED_POSITION_TABLES = ("pos_embed", "decoder_pos_embed")


def mae_param_labels(params: Any, learned_pos_embed: bool = False) -> Any:
    """'frozen' for fixed position tables, 'decay' for matrices, 'no_decay' for 1-D params and biases."""

    def label(path: tuple[str, ...], leaf: jax.Array) -> str:
        if path[-1] in FIXED_POSITION_TABLES and not learned_pos_embed:
            return "frozen"
        return "no_decay" if leaf.ndim <= 1 or path[-1] == "bias" else "decay"

    return path_aware_map(label, params)


def mae_adamw(learning_rate: float | optax.Schedule, params: Any, *, weight_decay: float = 0.05,
              b1: float = 0.9, b2: float = 0.95,
              learned_pos_embed: bool = False) -> optax.GradientTransformation:
    """SFM's pretraining AdamW (betas .9/.95, wd .05 on matrices only, fixed tables untouched)."""
    return optax.multi_transform(
        {"decay": optax.adamw(learning_rate, b1, b2, weight_decay=weight_decay),
         "no_decay": optax.adamw(learning_rate, b1, b2, weight_decay=0.0),
         "frozen": optax.set_to_zero()},
        mae_param_labels(params, learned_pos_embed))
