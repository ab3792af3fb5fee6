"""SeisLM (and HuggingFace wav2vec2) checkpoints <-> Flax params for `Wav2Vec2ForPreTraining`.

Reads Lightning `.ckpt` files ('state_dict', keys prefixed `model.`) and plain state_dict files,
with either weight-norm naming of the positional conv (`parametrizations.weight.original0/1` or
the older `weight_g`/`weight_v`). The architecture comes from tensor shapes; what shapes cannot
show (head count, conv strides, pre/post-LN, quantizer logit scaling) comes from the pickled
ml_collections config when the file carries one -- read as inert data, never executed -- and
otherwise from the known layouts (SeisLM "layer" norm = pre-LN with scaled logits, HF "group"
norm = post-LN). Fine-tuned phase-picker/classifier files load their trunk and report the head keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
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
from seisfuse.convert.torch_format import (
    CheckpointError,
    Placeholder,
    read_torch_checkpoint,
    write_torch_checkpoint,
)
from seisfuse.models.wav2vec2 import WAV2VEC2_PRESETS, Wav2Vec2Config

Params = dict[str, Any]

WEIGHT_NORM_KEYS = {"weight_g": "parametrizations.weight.original0",
                    "weight_v": "parametrizations.weight.original1"}
POS_CONV = "wav2vec2.encoder.pos_conv_embed.conv"
PRETRAINING_PREFIXES = ("quantizer.", "project_hid.", "project_q.")
# Config fields that tensor shapes do not determine, under SeisLM's / HF's config names.
HINT_FIELDS = {"num_attention_heads": "num_attention_heads", "conv_stride": "conv_stride",
               "do_stable_layer_norm": "do_stable_layer_norm",
               "scale_logits_in_quantization": "scale_quantizer_logits",
               "layer_norm_eps": "layer_norm_eps", "num_negatives": "num_negatives",
               "contrastive_logits_temperature": "contrastive_logits_temperature",
               "diversity_loss_weight": "diversity_loss_weight", "mask_time_prob": "mask_time_prob",
               "mask_time_length": "mask_time_length", "mask_time_min_masks": "mask_time_min_masks",
               "initializer_range": "initializer_range"}


# ----------------------------------------------------------------- reading the file


def seislm_state_dict(checkpoint: Any) -> dict[str, np.ndarray]:
    """Flat state_dict with SeisLM/HF `Wav2Vec2ForPreTraining` key names.

    Strips Lightning's `model.` prefix, adds `wav2vec2.` to bare `Wav2Vec2Model` files, and maps
    the legacy `weight_g`/`weight_v` positional-conv keys to the parametrizations names.
    """
    state = find_state_dict(checkpoint, ("state_dict", "model"))
    if any(k.startswith("model.wav2vec2.") for k in state):  # Lightning module attribute `model`
        state = {k.removeprefix("model."): v for k, v in state.items()}
    bare = "feature_extractor.conv_layers.0.conv.weight" in state
    if bare and not any(k.startswith("wav2vec2.") for k in state):
        state = {("wav2vec2." + k if not k.startswith(PRETRAINING_PREFIXES) else k): v
                 for k, v in state.items()}
    for legacy, current in WEIGHT_NORM_KEYS.items():
        old, new = f"{POS_CONV}.{legacy}", f"{POS_CONV}.{current}"
        if old in state:
            if new in state:
                raise CheckpointError(f"the file holds both {old} and {new}: ambiguous positional conv")
            state[new] = state.pop(old)
    return state


def _plain(value: Any) -> Any:
    """Plain data out of an unpickled ConfigDict placeholder (its `_fields`), recursively."""
    if isinstance(value, Placeholder):
        fields = value.state.get("_fields") if isinstance(value.state, dict) else None
        return _plain(fields) if isinstance(fields, Mapping) else None
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else None


def config_hints(checkpoint: Any) -> dict[str, Any]:
    """Wav2Vec2Config fields found in a Lightning file's pickled model config (inert data only)."""
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("hyper_parameters"), Mapping):
        return {}
    hyper = _plain(checkpoint["hyper_parameters"]) or {}
    candidates = [hyper.get("model_config"), (hyper.get("config") or {}).get("model_config"),
                  hyper.get("config")]
    hints: dict[str, Any] = {}
    for source in candidates:
        if not isinstance(source, Mapping):
            continue
        for name, field in HINT_FIELDS.items():
            if field not in hints and source.get(name) is not None:
                hints[field] = tuple(source[name]) if isinstance(source[name], list) else source[name]
    return hints


# ----------------------------------------------------------------- configuration from shapes


def _count(state: Mapping[str, Any], pattern: str) -> int:
    regex = re.compile(pattern)
    indices = {int(m.group(1)) for k in state if (m := regex.match(k))}
    if indices and indices != set(range(max(indices) + 1)):
        raise CheckpointError(f"layer indices matching {pattern!r} are not contiguous: {sorted(indices)}")
    return len(indices)


def _preset_value(field: str, **match: Any) -> Any:
    for cfg in WAV2VEC2_PRESETS.values():
        if all(getattr(cfg, k) == v for k, v in match.items()):
            return getattr(cfg, field)
    return None


def infer_config(state: Mapping[str, Any], hints: Mapping[str, Any] | None = None,
                 **overrides: Any) -> Wav2Vec2Config:
    """Wav2Vec2Config from shapes, then `hints` (the file's config), then `overrides` (the caller)."""
    s = {k: tuple(np.shape(v)) for k, v in state.items()}
    fe = "wav2vec2.feature_extractor.conv_layers"
    core = [f"{fe}.0.conv.weight", "wav2vec2.feature_projection.projection.weight",
            f"{POS_CONV}.parametrizations.weight.original1"]
    absent = [k for k in core if k not in s]
    if absent:
        raise CheckpointError("not a SeisLM/wav2vec2 checkpoint: missing " + ", ".join(absent))
    n_conv = _count(s, rf"^{re.escape(fe)}\.(\d+)\.conv\.weight$")
    convs = [s[f"{fe}.{i}.conv.weight"] for i in range(n_conv)]
    normed = [f"{fe}.{i}.layer_norm.weight" in s for i in range(n_conv)]
    if all(normed):
        norm = "layer"
    elif normed[0] and not any(normed[1:]):
        norm = "group"
    else:
        raise CheckpointError(f"feature-encoder norms present in layers {normed}: neither the "
                              "'layer' (all) nor the 'group' (first only) layout")
    hidden, _ = s["wav2vec2.feature_projection.projection.weight"]
    pos_v = s[f"{POS_CONV}.parametrizations.weight.original1"]
    values: dict[str, Any] = dict(
        input_channels=convs[0][1], conv_dim=tuple(c[0] for c in convs),
        conv_kernel=tuple(c[2] for c in convs), conv_bias=f"{fe}.0.conv.bias" in s,
        feat_extract_norm=norm, hidden_size=hidden,
        num_hidden_layers=_count(s, r"^wav2vec2\.encoder\.layers\.(\d+)\.attention\.q_proj\.weight$"),
        intermediate_size=s.get("wav2vec2.encoder.layers.0.feed_forward.intermediate_dense.weight",
                                (3072,))[0],
        num_conv_pos_embeddings=pos_v[2], num_conv_pos_embedding_groups=hidden // pos_v[1],
        # Convention of the two released families when the file does not say otherwise.
        do_stable_layer_norm=norm == "layer", scale_quantizer_logits=norm == "layer",
    )
    if "quantizer.codevectors" in s and "project_q.weight" in s:
        _, total, width = s["quantizer.codevectors"]
        proj, codevector_dim = s["project_q.weight"]
        groups = codevector_dim // width
        values.update(num_codevector_groups=groups, num_codevectors_per_group=total // groups,
                      codevector_dim=codevector_dim, proj_codevector_dim=proj)
    values.update(hints or {})
    values.update(overrides)
    if "num_attention_heads" not in values:
        values["num_attention_heads"] = _preset_value("num_attention_heads", hidden_size=hidden)
        if values["num_attention_heads"] is None:
            raise CheckpointError(f"the head count of hidden size {hidden} is not in the file or any "
                                  "preset: pass num_attention_heads=")
    if "conv_stride" not in values:
        values["conv_stride"] = _preset_value("conv_stride", conv_kernel=values["conv_kernel"])
        if values["conv_stride"] is None:
            raise CheckpointError(f"conv strides for kernels {values['conv_kernel']} are not in the "
                                  "file or any preset: pass conv_stride=")
    try:
        return Wav2Vec2Config(**values)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"inconsistent SeisLM configuration {values}: {exc}") from exc


def expected_shapes(cfg: Wav2Vec2Config, *, pretraining: bool = True,
                    masked_spec_embed: bool = True) -> dict[str, tuple[int, ...]]:
    """Every key of the original model for `cfg` (trunk only when pretraining=False), with shapes."""
    h, f = cfg.hidden_size, cfg.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {}
    if masked_spec_embed:
        shapes["wav2vec2.masked_spec_embed"] = (h,)
    c_in = cfg.input_channels
    for i, (c_out, k) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel, strict=True)):
        key = f"wav2vec2.feature_extractor.conv_layers.{i}"
        shapes[f"{key}.conv.weight"] = (c_out, c_in, k)
        if cfg.conv_bias:
            shapes[f"{key}.conv.bias"] = (c_out,)
        if cfg.feat_extract_norm == "layer" or i == 0:
            shapes[f"{key}.layer_norm.weight"] = shapes[f"{key}.layer_norm.bias"] = (c_out,)
        c_in = c_out
    c = cfg.conv_dim[-1]
    shapes.update({
        "wav2vec2.feature_projection.layer_norm.weight": (c,),
        "wav2vec2.feature_projection.layer_norm.bias": (c,),
        "wav2vec2.feature_projection.projection.weight": (h, c),
        "wav2vec2.feature_projection.projection.bias": (h,),
        f"{POS_CONV}.bias": (h,),
        f"{POS_CONV}.parametrizations.weight.original0": (1, 1, cfg.num_conv_pos_embeddings),
        f"{POS_CONV}.parametrizations.weight.original1":
            (h, h // cfg.num_conv_pos_embedding_groups, cfg.num_conv_pos_embeddings),
        "wav2vec2.encoder.layer_norm.weight": (h,), "wav2vec2.encoder.layer_norm.bias": (h,),
    })
    for i in range(cfg.num_hidden_layers):
        key = f"wav2vec2.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{key}.attention.{proj}.weight"] = (h, h)
            shapes[f"{key}.attention.{proj}.bias"] = (h,)
        for ln in ("layer_norm", "final_layer_norm"):
            shapes[f"{key}.{ln}.weight"] = shapes[f"{key}.{ln}.bias"] = (h,)
        shapes.update({f"{key}.feed_forward.intermediate_dense.weight": (f, h),
                       f"{key}.feed_forward.intermediate_dense.bias": (f,),
                       f"{key}.feed_forward.output_dense.weight": (h, f),
                       f"{key}.feed_forward.output_dense.bias": (h,)})
    if pretraining:
        gv, p = cfg.num_codevectors, cfg.proj_codevector_dim
        shapes.update({
            "quantizer.codevectors": (1, gv, cfg.codevector_dim // cfg.num_codevector_groups),
            "quantizer.weight_proj.weight": (gv, c), "quantizer.weight_proj.bias": (gv,),
            "project_hid.weight": (p, h), "project_hid.bias": (p,),
            "project_q.weight": (p, cfg.codevector_dim), "project_q.bias": (p,),
        })
    return shapes


# ----------------------------------------------------------------- torch -> flax




def _conv(state: Mapping[str, Any], key: str) -> Params:
    out = {"kernel": float32(state[f"{key}.weight"]).transpose(2, 1, 0)}
    if f"{key}.bias" in state:
        out["bias"] = float32(state[f"{key}.bias"])
    return out


def _attention(state: Mapping[str, Any], key: str, heads: int) -> Params:
    out = {}
    for name, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        w, b = float32(state[f"{key}.{proj}.weight"]), float32(state[f"{key}.{proj}.bias"])
        out[name] = {"kernel": w.T.reshape(w.shape[1], heads, -1), "bias": b.reshape(heads, -1)}
    w = float32(state[f"{key}.out_proj.weight"])
    out["out"] = {"kernel": w.T.reshape(heads, -1, w.shape[0]),
                  "bias": float32(state[f"{key}.out_proj.bias"])}
    return out


def state_dict_to_params(state: Mapping[str, Any], cfg: Wav2Vec2Config) -> tuple[Params, list[str]]:
    """Convert for `cfg`; returns (params, head keys the model does not use).

    Pretraining files convert whole; trunk-only files (fine-tuned downstream models) convert the
    `wav2vec2` subtree. Missing, mis-shaped or unknown trunk/pretraining keys raise CheckpointError.
    """
    pretraining = any(k.startswith(PRETRAINING_PREFIXES) for k in state)
    expected = expected_shapes(cfg, pretraining=pretraining,
                               masked_spec_embed="wav2vec2.masked_spec_embed" in state)
    unknown = [k for k in state if k not in expected and k.startswith(("wav2vec2.",) + PRETRAINING_PREFIXES)]
    listed = f"unexpected keys ({len(unknown)}): " + ", ".join(unknown)
    try:
        unused = check_state_dict(state, expected, "SeisLM")
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}\n{listed}" if unknown else str(exc)) from None
    if unknown:
        raise CheckpointError(f"SeisLM: {listed}")
    fe = "wav2vec2.feature_extractor.conv_layers"
    trunk: Params = {
        "feature_extractor": {
            f"conv_layers_{i}": {"conv": _conv(state, f"{fe}.{i}.conv"),
                                 **({"layer_norm": norm(state, f"{fe}.{i}.layer_norm")}
                                    if f"{fe}.{i}.layer_norm.weight" in state else {})}
            for i in range(len(cfg.conv_dim))},
        "feature_projection": {"layer_norm": norm(state, "wav2vec2.feature_projection.layer_norm"),
                               "projection": linear(state, "wav2vec2.feature_projection.projection")},
        "encoder": {
            "pos_conv_embed": {"conv": {
                "weight_g": float32(state[f"{POS_CONV}.parametrizations.weight.original0"]).reshape(-1),
                "weight_v":
                    float32(state[f"{POS_CONV}.parametrizations.weight.original1"]).transpose(2, 1, 0),
                "bias": float32(state[f"{POS_CONV}.bias"])}},
            "layer_norm": norm(state, "wav2vec2.encoder.layer_norm"),
        },
    }
    if "wav2vec2.masked_spec_embed" in state:
        trunk["masked_spec_embed"] = float32(state["wav2vec2.masked_spec_embed"])
    for i in range(cfg.num_hidden_layers):
        key = f"wav2vec2.encoder.layers.{i}"
        trunk["encoder"][f"layers_{i}"] = {
            "attention": _attention(state, f"{key}.attention", cfg.num_attention_heads),
            "layer_norm": norm(state, f"{key}.layer_norm"),
            "feed_forward": {"intermediate_dense": linear(state, f"{key}.feed_forward.intermediate_dense"),
                             "output_dense": linear(state, f"{key}.feed_forward.output_dense")},
            "final_layer_norm": norm(state, f"{key}.final_layer_norm"),
        }
    params: Params = {"wav2vec2": trunk}
    if pretraining:
        params.update({
            "quantizer": {"codevectors": float32(state["quantizer.codevectors"]),
                          "weight_proj": linear(state, "quantizer.weight_proj")},
            "project_hid": linear(state, "project_hid"),
            "project_q": linear(state, "project_q"),
        })
    return params, unused


def load_seislm(path: str | Path, **overrides: Any) -> tuple[Wav2Vec2Config, Params]:
    """Read a SeisLM `.ckpt`/state_dict (or HF wav2vec2 `.bin`) safely, without torch.

    Returns (Wav2Vec2Config, params) for `Wav2Vec2ForPreTraining(cfg)`, float32 jax arrays.
    Fine-tuned files give the `wav2vec2` trunk only (enough for `encode`); their head keys are
    reported with a warning. `overrides` set config fields the file cannot tell (e.g.
    num_attention_heads, or pretraining_attention_quirk=True).
    """
    checkpoint = read_torch_checkpoint(path)
    state = seislm_state_dict(checkpoint)
    cfg = infer_config(state, config_hints(checkpoint), **overrides)
    params, unused = state_dict_to_params(state, cfg)
    report_unused("load_seislm", path, unused, "the wav2vec2 model")
    return cfg, to_jax(params)



# ----------------------------------------------------------------- flax -> torch




def params_to_state_dict(params: Params, cfg: Wav2Vec2Config) -> dict[str, np.ndarray]:
    """The original model's state_dict for these params (trunk only if they hold no quantizer)."""
    trunk = params["wav2vec2"]
    sd: dict[str, np.ndarray] = {}
    if "masked_spec_embed" in trunk:
        sd["wav2vec2.masked_spec_embed"] = np.asarray(trunk["masked_spec_embed"])
    for i in range(len(cfg.conv_dim)):
        layer = trunk["feature_extractor"][f"conv_layers_{i}"]
        key = f"wav2vec2.feature_extractor.conv_layers.{i}"
        sd[f"{key}.conv.weight"] = np.asarray(layer["conv"]["kernel"]).transpose(2, 1, 0)
        if "bias" in layer["conv"]:
            sd[f"{key}.conv.bias"] = np.asarray(layer["conv"]["bias"])
        if "layer_norm" in layer:
            sd.update(norm_back(layer["layer_norm"], f"{key}.layer_norm"))
    projection = trunk["feature_projection"]
    sd.update(norm_back(projection["layer_norm"], "wav2vec2.feature_projection.layer_norm"))
    sd.update(linear_back(projection["projection"], "wav2vec2.feature_projection.projection"))
    encoder = trunk["encoder"]
    conv = encoder["pos_conv_embed"]["conv"]
    sd[f"{POS_CONV}.bias"] = np.asarray(conv["bias"])
    sd[f"{POS_CONV}.parametrizations.weight.original0"] = np.asarray(conv["weight_g"]).reshape(1, 1, -1)
    sd[f"{POS_CONV}.parametrizations.weight.original1"] = np.asarray(conv["weight_v"]).transpose(2, 1, 0)
    sd.update(norm_back(encoder["layer_norm"], "wav2vec2.encoder.layer_norm"))
    h = cfg.hidden_size
    for i in range(cfg.num_hidden_layers):
        layer, key = encoder[f"layers_{i}"], f"wav2vec2.encoder.layers.{i}"
        attention = layer["attention"]
        for name, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            sd[f"{key}.attention.{proj}.weight"] = np.asarray(attention[name]["kernel"]).reshape(h, h).T
            sd[f"{key}.attention.{proj}.bias"] = np.asarray(attention[name]["bias"]).reshape(h)
        sd[f"{key}.attention.out_proj.weight"] = np.asarray(attention["out"]["kernel"]).reshape(h, h).T
        sd[f"{key}.attention.out_proj.bias"] = np.asarray(attention["out"]["bias"])
        sd.update(norm_back(layer["layer_norm"], f"{key}.layer_norm"))
        for dense in ("intermediate_dense", "output_dense"):
            sd.update(linear_back(layer["feed_forward"][dense], f"{key}.feed_forward.{dense}"))
        sd.update(norm_back(layer["final_layer_norm"], f"{key}.final_layer_norm"))
    pretraining = "quantizer" in params
    if pretraining:
        sd["quantizer.codevectors"] = np.asarray(params["quantizer"]["codevectors"])
        sd.update(linear_back(params["quantizer"]["weight_proj"], "quantizer.weight_proj"))
        sd.update(linear_back(params["project_hid"], "project_hid"))
        sd.update(linear_back(params["project_q"], "project_q"))
    expected = expected_shapes(cfg, pretraining=pretraining,
                               masked_spec_embed="wav2vec2.masked_spec_embed" in sd)
    check_state_dict(sd, expected, "SeisLM export")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def export_seislm(params: Params, cfg: Wav2Vec2Config, path: str | Path, *, lightning: bool = False) -> None:
    """Write the state_dict for the original model (`load_state_dict(..., strict=True)`).

    lightning=False: the bare state_dict. lightning=True: a Lightning-style dict with the keys
    under 'state_dict' prefixed `model.` and the config as plain data under 'hyper_parameters'.
    """
    sd = params_to_state_dict(params, cfg)
    if not lightning:
        write_torch_checkpoint(path, sd)
        return
    model_config = {field: getattr(cfg, name) for field, name in HINT_FIELDS.items()}
    model_config.update(input_dim=cfg.input_channels, conv_dim=cfg.conv_dim, conv_kernel=cfg.conv_kernel,
                        conv_bias=cfg.conv_bias, feat_extract_norm=cfg.feat_extract_norm,
                        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                        intermediate_size=cfg.intermediate_size,
                        num_conv_pos_embeddings=cfg.num_conv_pos_embeddings,
                        num_conv_pos_embedding_groups=cfg.num_conv_pos_embedding_groups,
                        num_codevector_groups=cfg.num_codevector_groups,
                        num_codevectors_per_group=cfg.num_codevectors_per_group,
                        codevector_dim=cfg.codevector_dim, proj_codevector_dim=cfg.proj_codevector_dim)
    model_config = {k: list(v) if isinstance(v, tuple) else v for k, v in model_config.items()}
    write_torch_checkpoint(path, {"state_dict": {"model." + k: v for k, v in sd.items()},
                                  "hyper_parameters": {"config": {"model_config": model_config}}})
