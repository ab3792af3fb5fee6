"""Joint-model towers that start from `seisfuse convert` output: their config and their weights.

A tower kind names the converted model it loads (`TowerKind.converted_kind`); the converted
config.json gives its backbone (encoder only), and the converted params replace the tower's
fresh encoder, tensor by tensor, with every missing or mis-shaped one named.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from flax.traverse_util import flatten_dict, unflatten_dict

from seisfuse.models.joint import JointConfig, TowerConfig, TowerKind, tower_kind


def _check_converted(modality: str, kind_name: str, kind: TowerKind, converted_kind: str) -> None:
    if converted_kind != kind.converted_kind:
        raise ValueError(f"tower {modality!r} ({kind_name}) needs converted {kind.converted_kind} weights, "
                         f"got {converted_kind!r}")


def tower_from_converted(modality: str, kind: str, converted_kind: str, converted_config: Mapping[str, Any],
                         pooling: str = "mean", **overrides: Any) -> TowerConfig:
    """The TowerConfig of a tower that starts from `seisfuse convert` output (its config.json)."""
    tower = tower_kind(kind)
    _check_converted(modality, kind, tower, converted_kind)
    values = {**dict(converted_config), **overrides, **tower.encoder_only}
    return TowerConfig(modality, kind, tower.config_type.from_dict(values), pooling)


def load_tower_weights(cfg: JointConfig, params: Mapping[str, Any], modality: str, converted_kind: str,
                       converted: Mapping[str, Any]) -> dict[str, Any]:
    """params with `modality`'s encoder replaced by converted weights (decoder, quantizer and other
    pretraining-only entries of the converted tree are not used). Raises naming missing keys and
    shape mismatches."""
    tower = cfg.tower(modality)
    _check_converted(modality, tower.kind, tower_kind(tower.kind), converted_kind)
    encoder = flatten_dict(params[modality]["backbone"]["encoder"])
    source = flatten_dict(converted)
    missing = sorted("/".join(k) for k in encoder if k not in source)
    if missing:
        raise ValueError(f"converted weights for {modality!r} lack {len(missing)} encoder parameters: "
                         f"{missing[:8]}{' ...' if len(missing) > 8 else ''}")
    mismatched = [f"{'/'.join(k)}: {tuple(source[k].shape)} vs {tuple(v.shape)}"
                  for k, v in encoder.items() if tuple(source[k].shape) != tuple(v.shape)]
    if mismatched:
        raise ValueError(f"converted weights for {modality!r} do not fit the tower: {mismatched[:8]}")
    loaded = unflatten_dict({k: jnp.asarray(source[k], v.dtype) for k, v in encoder.items()})
    out = dict(params)
    out[modality] = {**params[modality], "backbone": {**params[modality]["backbone"], "encoder": loaded}}
    return out
