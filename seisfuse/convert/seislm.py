"""SeisLM (and HuggingFace wav2vec2) checkpoints <-> Flax params for `Wav2Vec2ForPreTraining`.

Reads Lightning `.ckpt` files ('state_dict', keys prefixed `model.`) and plain state_dict files,
with either weight-norm naming of the positional conv (`parametrizations.weight.original0/1` or
the older `weight_g`/`weight_v`). The architecture comes from tensor shapes; what shapes cannot
show (head count, conv strides, pre/post-LN, quantizer logit scaling) comes from the pickled
ml_collections config when the file carries one -- read as inert data, never executed -- and
otherwise from the known layouts (SeisLM "layer" norm = pre-LN with scaled logits, HF "group"
norm = post-LN). `load_seislm` reads the trunk of any file (reporting head keys it ignores);
`load_seislm_finetuned` reads a fine-tuned phase picker or event classifier whole, into the Flax
models of `seisfuse.models.seislm_heads`, and `export_seislm_finetuned` writes one back. One key
table per model (`key_table`, plus `head_key_table` for a downstream head; see
`seisfuse.convert.common`) drives loading, export and the shape check. Every config value read
from a file is type- and range-checked: a hostile file gives CheckpointError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import numpy as np

from seisfuse.convert.common import (
    KeyEntry,
    KeyTable,
    export_table,
    find_state_dict,
    load_table,
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
from seisfuse.models.seislm_heads import SeisLMClassifier, SeisLMPicker
from seisfuse.models.wav2vec2 import WAV2VEC2_PRESETS, Wav2Vec2Config

Params = dict[str, Any]

WEIGHT_NORM_KEYS = {"weight_g": "parametrizations.weight.original0",
                    "weight_v": "parametrizations.weight.original1"}
POS_CONV = "wav2vec2.encoder.pos_conv_embed.conv"
PRETRAINING_PREFIXES = ("quantizer.", "project_hid.", "project_q.")
MASKED_SPEC_EMBED = "wav2vec2.masked_spec_embed"


# ----------------------------------------------------------------- reading the file


def seislm_state_dict(checkpoint: Any) -> dict[str, np.ndarray]:
    """Flat state_dict with SeisLM/HF `Wav2Vec2ForPreTraining` key names.

    Strips Lightning's `model.` prefix, adds `wav2vec2.` to bare `Wav2Vec2Model` files, and maps
    the legacy `weight_g`/`weight_v` positional-conv keys to the parametrizations names.
    """
    state = find_state_dict(checkpoint, ("state_dict", "model"))
    odd = [k for k in state if not isinstance(k, str)]
    if odd:
        raise CheckpointError(f"the state_dict has {len(odd)} keys that are not strings (first: "
                              f"{type(odd[0]).__name__}): not a PyTorch state_dict")
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


MAX_CONFIG_DEPTH = 32


def _plain(value: Any, depth: int = 0) -> Any:
    """Plain data out of an unpickled ConfigDict placeholder (its `_fields`), recursively.

    A pickle can nest containers (or make them contain themselves) without limit: deeper than
    MAX_CONFIG_DEPTH is refused instead of exhausting the interpreter's recursion limit.
    """
    if depth > MAX_CONFIG_DEPTH:
        raise CheckpointError(f"the file's config nests deeper than {MAX_CONFIG_DEPTH} levels "
                              "(corrupt or hostile file)")
    if isinstance(value, Placeholder):
        fields = value.state.get("_fields") if isinstance(value.state, dict) else None
        return _plain(fields, depth + 1) if isinstance(fields, Mapping) else None
    if isinstance(value, Mapping):
        return {k: _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else None


Validator = Callable[[str, Any], Any]


def _shown(value: Any) -> str:
    """A short repr for error messages (a hostile value may be huge; an int beyond 4300 digits
    cannot even be printed)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


MAX_CONFIG_INT = 2**31 - 1  # no size, count or stride comes near it; larger is corrupt or hostile


def _integer(low: int) -> Validator:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_CONFIG_INT:
            raise CheckpointError(f"model_config.{name} must be an integer in [{low}, {MAX_CONFIG_INT}], "
                                  f"got {_shown(value)}")
        return value
    return check


def _real(low: float, high: float = math.inf, *, open_low: bool = False, open_high: bool = False
          ) -> Validator:
    def check(name: str, value: Any) -> float:
        number = math.nan
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond float range
                pass
        ok = math.isfinite(number) and (number > low if open_low else number >= low)
        if not (ok and (number < high if open_high else number <= high)):
            span = f"{'(' if open_low else '['}{low}, {high}{')' if open_high or high == math.inf else ']'}"
            raise CheckpointError(f"model_config.{name} must be a finite number in {span}, "
                                  f"got {_shown(value)}")
        return number
    return check


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise CheckpointError(f"model_config.{name} must be true or false, got {_shown(value)}")
    return value


def _positive_ints(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_CONFIG_INT for v in value):
        raise CheckpointError(f"model_config.{name} must be a non-empty list of integers in "
                              f"[1, {MAX_CONFIG_INT}], got {_shown(value)}")
    return tuple(value)


# Config fields that tensor shapes do not determine: SeisLM's / HF's name -> (Wav2Vec2Config
# field, validator).
HINT_FIELDS: dict[str, tuple[str, Validator]] = {
    "num_attention_heads": ("num_attention_heads", _integer(1)),
    "conv_stride": ("conv_stride", _positive_ints),
    "do_stable_layer_norm": ("do_stable_layer_norm", _boolean),
    "scale_logits_in_quantization": ("scale_quantizer_logits", _boolean),
    "layer_norm_eps": ("layer_norm_eps", _real(0.0, open_low=True)),
    "num_negatives": ("num_negatives", _integer(1)),
    "contrastive_logits_temperature": ("contrastive_logits_temperature", _real(0.0, open_low=True)),
    "diversity_loss_weight": ("diversity_loss_weight", _real(0.0)),
    "mask_time_prob": ("mask_time_prob", _real(0.0, 1.0)),
    "mask_time_length": ("mask_time_length", _integer(1)),
    "mask_time_min_masks": ("mask_time_min_masks", _integer(0)),
    "initializer_range": ("initializer_range", _real(0.0)),
}
# The downstream models' fields, under the original names (also the seisfuse field names).
HEAD_FIELDS: dict[str, Validator] = {
    "num_labels": _integer(1),
    "num_classes": _integer(1),
    "classifier_proj_size": _integer(1),
    "use_weighted_layer_sum": _boolean,
    "head_dropout_rate": _real(0.0, 1.0, open_high=True),
}


def _config_sources(checkpoint: Any) -> list[Mapping[str, Any]]:
    """The model configs a Lightning file pickles: hyper_parameters.model_config (fine-tuning),
    .config.model_config and .config (pretraining), as plain data."""
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("hyper_parameters"), Mapping):
        return []
    hyper = _plain(checkpoint["hyper_parameters"]) or {}
    config = hyper.get("config")
    nested = config.get("model_config") if isinstance(config, Mapping) else None
    return [source for source in (hyper.get("model_config"), nested, config) if isinstance(source, Mapping)]


def _read_fields(checkpoint: Any, fields: Mapping[str, Validator]) -> dict[str, Any]:
    """Validated values of `fields` (name -> validator) from the first config holding each."""
    found: dict[str, Any] = {}
    for source in _config_sources(checkpoint):
        for name, validate in fields.items():
            if name not in found and source.get(name) is not None:
                found[name] = validate(name, source[name])
    return found


def config_hints(checkpoint: Any) -> dict[str, Any]:
    """Wav2Vec2Config fields found in a Lightning file's pickled model config (inert data only)."""
    values = _read_fields(checkpoint, {name: check for name, (_, check) in HINT_FIELDS.items()})
    return {HINT_FIELDS[name][0]: value for name, value in values.items()}


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


def key_table(cfg: Wav2Vec2Config, *, pretraining: bool = True, masked_spec_embed: bool = True) -> KeyTable:
    """The original model's modules for `cfg` (the `wav2vec2` trunk only when pretraining=False),
    in its state_dict's order."""
    h, f, heads = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads
    trunk = ("wav2vec2",)
    table: KeyTable = []
    if masked_spec_embed:
        table.append(KeyEntry(MASKED_SPEC_EMBED, (*trunk, "masked_spec_embed"), "raw", (h,)))
    c_in = cfg.input_channels
    for i, (c_out, k) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel, strict=True)):
        key = f"wav2vec2.feature_extractor.conv_layers.{i}"
        path = (*trunk, "feature_extractor", f"conv_layers_{i}")
        table.append(KeyEntry(f"{key}.conv", (*path, "conv"), "conv1d", (c_out, c_in, k), bias=cfg.conv_bias))
        if cfg.feat_extract_norm == "layer" or i == 0:
            table.append(KeyEntry(f"{key}.layer_norm", (*path, "layer_norm"), "norm", (c_out,)))
        c_in = c_out
    c = cfg.conv_dim[-1]
    projection, encoder = (*trunk, "feature_projection"), (*trunk, "encoder")
    table += [
        KeyEntry("wav2vec2.feature_projection.layer_norm", (*projection, "layer_norm"), "norm", (c,)),
        KeyEntry("wav2vec2.feature_projection.projection", (*projection, "projection"), "linear", (h, c)),
        KeyEntry(POS_CONV, (*encoder, "pos_conv_embed", "conv"), "weight_norm",
                 (h, h // cfg.num_conv_pos_embedding_groups, cfg.num_conv_pos_embeddings)),
        KeyEntry("wav2vec2.encoder.layer_norm", (*encoder, "layer_norm"), "norm", (h,)),
    ]
    for i in range(cfg.num_hidden_layers):
        key, path = f"wav2vec2.encoder.layers.{i}", (*encoder, f"layers_{i}")
        attention, attention_path = f"{key}.attention", (*path, "attention")
        table += [KeyEntry(f"{attention}.{proj}", (*attention_path, name), "attn_in", (h, h), heads=heads)
                  for proj, name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"))]
        table += [
            KeyEntry(f"{attention}.out_proj", (*attention_path, "out"), "attn_out", (h, h), heads=heads),
            KeyEntry(f"{key}.layer_norm", (*path, "layer_norm"), "norm", (h,)),
            KeyEntry(f"{key}.feed_forward.intermediate_dense", (*path, "feed_forward", "intermediate_dense"),
                     "linear", (f, h)),
            KeyEntry(f"{key}.feed_forward.output_dense", (*path, "feed_forward", "output_dense"),
                     "linear", (h, f)),
            KeyEntry(f"{key}.final_layer_norm", (*path, "final_layer_norm"), "norm", (h,)),
        ]
    if pretraining:
        gv, p = cfg.num_codevectors, cfg.proj_codevector_dim
        table += [
            KeyEntry("quantizer.codevectors", ("quantizer", "codevectors"), "raw",
                     (1, gv, cfg.codevector_dim // cfg.num_codevector_groups)),
            KeyEntry("quantizer.weight_proj", ("quantizer", "weight_proj"), "linear", (gv, c)),
            KeyEntry("project_hid", ("project_hid",), "linear", (p, h)),
            KeyEntry("project_q", ("project_q",), "linear", (p, cfg.codevector_dim)),
        ]
    return table


def expected_shapes(cfg: Wav2Vec2Config, *, pretraining: bool = True,
                    masked_spec_embed: bool = True) -> dict[str, tuple[int, ...]]:
    """Every key of the original model for `cfg` (trunk only when pretraining=False), with shapes."""
    return table_shapes(key_table(cfg, pretraining=pretraining, masked_spec_embed=masked_spec_embed))


def state_dict_to_params(state: Mapping[str, Any], cfg: Wav2Vec2Config) -> tuple[Params, list[str]]:
    """Convert for `cfg`; returns (params, head keys the model does not use).

    Pretraining files convert whole; trunk-only files (fine-tuned downstream models) convert the
    `wav2vec2` subtree. Missing, mis-shaped or unknown trunk/pretraining keys raise CheckpointError.
    """
    table = key_table(cfg, pretraining=any(k.startswith(PRETRAINING_PREFIXES) for k in state),
                      masked_spec_embed=MASKED_SPEC_EMBED in state)
    variables, unused = load_table(state, table, "SeisLM", owned=("wav2vec2.", *PRETRAINING_PREFIXES))
    return variables["params"], unused


def load_seislm(path: str | Path, **overrides: Any) -> tuple[Wav2Vec2Config, Params]:
    """Read a SeisLM `.ckpt`/state_dict (or HF wav2vec2 `.bin`) safely, without torch.

    Returns (Wav2Vec2Config, params) for `Wav2Vec2ForPreTraining(cfg)`, float32 jax arrays.
    Fine-tuned files give the `wav2vec2` trunk only (enough for `encode`); their head keys are
    reported with a warning. `overrides` set config fields the file cannot tell (e.g.
    num_attention_heads, or pretraining_attention_quirk=True).
    """
    return seislm_from_checkpoint(read_torch_checkpoint(path), path, **overrides)


def seislm_from_checkpoint(checkpoint: Any, source: Any, **overrides: Any) -> tuple[Wav2Vec2Config, Params]:
    """`load_seislm` on a checkpoint already read; `source` names it in warnings."""
    state = seislm_state_dict(checkpoint)
    cfg = infer_config(state, config_hints(checkpoint), **overrides)
    params, unused = state_dict_to_params(state, cfg)
    report_unused("load_seislm", source, unused, "the wav2vec2 model")
    return cfg, to_jax(params)


def params_to_state_dict(params: Params, cfg: Wav2Vec2Config) -> dict[str, np.ndarray]:
    """The original model's state_dict for these params (trunk only if they hold no quantizer)."""
    table = key_table(cfg, pretraining="quantizer" in params,
                      masked_spec_embed="masked_spec_embed" in params.get("wav2vec2", {}))
    return export_table({"params": params}, table, "SeisLM")


def export_seislm(params: Params, cfg: Wav2Vec2Config, path: str | Path, *, lightning: bool = False) -> None:
    """Write the state_dict for the original model (`load_state_dict(..., strict=True)`).

    lightning=False: the bare state_dict. lightning=True: a Lightning-style dict with the keys
    under 'state_dict' prefixed `model.` and the config as plain data under 'hyper_parameters'.
    """
    sd = params_to_state_dict(params, cfg)
    if not lightning:
        write_torch_checkpoint(path, sd)
        return
    write_torch_checkpoint(path, {"state_dict": {"model." + k: v for k, v in sd.items()},
                                  "hyper_parameters": {"config": {"model_config": _model_config(cfg)}}})


def _model_config(cfg: Wav2Vec2Config) -> dict[str, Any]:
    """The trunk's part of SeisLM's model_config (original names) as plain data."""
    model_config = {field: getattr(cfg, name) for field, (name, _) in HINT_FIELDS.items()}
    model_config.update(input_dim=cfg.input_channels, conv_dim=cfg.conv_dim, conv_kernel=cfg.conv_kernel,
                        conv_bias=cfg.conv_bias, feat_extract_norm=cfg.feat_extract_norm,
                        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                        intermediate_size=cfg.intermediate_size,
                        num_conv_pos_embeddings=cfg.num_conv_pos_embeddings,
                        num_conv_pos_embedding_groups=cfg.num_conv_pos_embedding_groups,
                        num_codevector_groups=cfg.num_codevector_groups,
                        num_codevectors_per_group=cfg.num_codevectors_per_group,
                        codevector_dim=cfg.codevector_dim, proj_codevector_dim=cfg.proj_codevector_dim)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in model_config.items()}


# ----------------------------------------------------------------- fine-tuned downstream models

DownstreamModel = SeisLMPicker | SeisLMClassifier
TASKS: dict[str, type[nn.Module]] = {"pick": SeisLMPicker, "classify": SeisLMClassifier}
TASK_NAMES = {"pick": "phase picker (MultiDimWav2Vec2ForFrameClassification: classifier.*, double_conv.*)",
              "classify": "event classifier (Wav2Vec2ForSequenceClassification: head.*)"}


def _double_conv(torch_prefix: str, flax_path: tuple[str, ...], c_in: int, c_out: int) -> KeyTable:
    """The heads' DoubleConv: Conv1d (no bias), BatchNorm, ReLU, Dropout, Conv1d, BatchNorm."""
    table, key = [], f"{torch_prefix}.double_conv"
    for conv, bn, width in ((0, 1, c_in), (4, 5, c_out)):
        table += [KeyEntry(f"{key}.{conv}", (*flax_path, f"double_conv_{conv}"), "conv1d", (c_out, width, 3),
                           bias=False),
                  KeyEntry(f"{key}.{bn}", (*flax_path, f"double_conv_{bn}"), "bn", (c_out,))]
    return table


def head_key_table(model: DownstreamModel) -> KeyTable:
    """Every non-trunk module of the original downstream model for `model`."""
    cfg = model.cfg
    h = cfg.hidden_size
    table: KeyTable = []
    if model.use_weighted_layer_sum:
        count = cfg.num_hidden_layers + 1
        table.append(KeyEntry("layer_weights", ("layer_weights",), "raw", (count,)))
        table += [KeyEntry(f"lns.{i}", (f"lns_{i}",), "norm", (h,)) for i in range(count)]
    if isinstance(model, SeisLMPicker):
        width = h + cfg.input_channels
        return [*table, *_double_conv("double_conv", ("double_conv",), width, width),
                KeyEntry("classifier", ("classifier",), "linear", (model.num_labels, width))]
    proj = model.classifier_proj_size
    return [*table, *_double_conv("head.1", ("head_1",), h, h), *_double_conv("head.2", ("head_2",), h, proj),
            KeyEntry("head.4", ("head_4",), "linear", (model.num_classes, proj))]


def finetuned_key_table(model: DownstreamModel, masked_spec_embed: bool) -> KeyTable:
    """The whole downstream model: the trunk, then the head (the one table that drives loading,
    export and the shape check)."""
    trunk = key_table(model.cfg, pretraining=False, masked_spec_embed=masked_spec_embed)
    return trunk + head_key_table(model)


def detect_task(state: Mapping[str, Any]) -> str:
    """"pick" or "classify", from the head keys of a fine-tuned state_dict (without `model.`)."""
    pick = [k for k in state if k.startswith(("classifier.", "double_conv."))]
    classify = [k for k in state if k.startswith("head.")]
    if pick and classify:
        raise CheckpointError(f"the file holds both phase-picker keys ({pick[0]}) and event-classifier "
                              f"keys ({classify[0]}): not one SeisLM downstream model")
    if pick or classify:
        return "pick" if pick else "classify"
    if any(k.startswith(PRETRAINING_PREFIXES) for k in state):
        raise CheckpointError("this is a SeisLM pretraining checkpoint (quantizer/project_* keys), not a "
                              "fine-tuned model: load it with load_seislm")
    raise CheckpointError("no SeisLM downstream head keys found (classifier.* / double_conv.* of the phase "
                          "picker, head.* of the event classifier)")


def _build_model(task: str, cfg: Wav2Vec2Config, state: Mapping[str, Any],
                 fields: Mapping[str, Any]) -> DownstreamModel:
    """The downstream model the head tensors describe; the file's config must agree with them."""
    weighted = "layer_weights" in state
    # The output Linear sizes the head; without it (reported missing by the full key check later)
    # the config or the original defaults stand in.
    weight = state.get("classifier.weight" if task == "pick" else "head.4.weight")
    shape = np.shape(weight) if weight is not None and np.ndim(weight) == 2 else None
    if task == "pick":
        sizes = {"num_labels": shape[0] if shape else fields.get("num_labels", 3)}
    else:
        sizes = {"num_classes": shape[0] if shape else fields.get("num_classes", 2),
                 "classifier_proj_size": shape[1] if shape else fields.get("classifier_proj_size", 256)}
    for name, value in [*sizes.items(), ("use_weighted_layer_sum", weighted)]:
        if name in fields and fields[name] != value:
            raise CheckpointError(f"model_config.{name} = {fields[name]!r} but the tensors say {value!r}")
    dropout = fields.get("head_dropout_rate", 0.2)
    try:
        return TASKS[task](cfg, **sizes, use_weighted_layer_sum=weighted, head_dropout_rate=dropout)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"inconsistent {task} head {sizes}: {exc}") from exc


def load_seislm_finetuned(path: str | Path, task: str | None = None,
                          **overrides: Any) -> tuple[DownstreamModel, dict[str, Params]]:
    """Read a fine-tuned SeisLM Lightning `.ckpt` (phase picker or event classifier) safely, without torch.

    Returns (model, variables): `model.apply(variables, waveforms [B, T, 3])` gives the picker's
    probabilities [B, T, 3] (P, S, noise) or the classifier's logits [B, classes]. The task and the
    head sizes come from the keys, checked against the pickled model_config; `task` ("pick" or
    "classify") insists on one. `overrides` set trunk config fields the file cannot tell.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)} or None, got {task!r}")
    return seislm_finetuned_from_checkpoint(read_torch_checkpoint(path), path, task, **overrides)


def is_seislm_finetuned(checkpoint: Any) -> bool:
    """Whether a checkpoint read by `read_torch_checkpoint` holds a SeisLM downstream head."""
    state = seislm_state_dict(checkpoint)
    return any(k.startswith(("classifier.", "double_conv.", "head.")) for k in state)


def seislm_finetuned_from_checkpoint(checkpoint: Any, source: Any, task: str | None = None,
                                     **overrides: Any) -> tuple[DownstreamModel, dict[str, Params]]:
    """`load_seislm_finetuned` on a checkpoint already read; `source` names it in errors."""
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)} or None, got {task!r}")
    state = seislm_state_dict(checkpoint)
    found = detect_task(state)
    if task is not None and found != task:
        raise CheckpointError(f"{source} is a SeisLM {TASK_NAMES[found]}, not a {TASK_NAMES[task]}")
    fields = _read_fields(checkpoint, HEAD_FIELDS)
    cfg = infer_config({k: v for k, v in state.items() if k.startswith("wav2vec2.")},
                       config_hints(checkpoint), **overrides)
    model = _build_model(found, cfg, state, fields)
    table = finetuned_key_table(model, masked_spec_embed=MASKED_SPEC_EMBED in state)
    variables, _ = load_table(state, table, f"SeisLM {model.__class__.__name__}")
    return model, to_jax(variables)


def finetuned_state_dict(model: DownstreamModel, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The original downstream model's state_dict for these variables (params + batch_stats).

    Raises CheckpointError when the variables lack a tensor the original has, hold one it does
    not have, or hold one of the wrong shape.
    """
    variables = nn.unbox(dict(variables))
    table = finetuned_key_table(model, "masked_spec_embed" in variables.get("params", {}).get("wav2vec2", {}))
    return export_table(variables, table, f"SeisLM {model.__class__.__name__}")


def export_seislm_finetuned(model: DownstreamModel, variables: Mapping[str, Any], path: str | Path) -> None:
    """Write a Lightning-style `.ckpt`: 'state_dict' (keys prefixed `model.`) loads with
    `load_state_dict(..., strict=True)` into the original downstream model; 'hyper_parameters'
    holds its model_config as plain data. num_batches_tracked is written as 0."""
    sd = finetuned_state_dict(model, variables)
    model_config = _model_config(model.cfg)
    model_config.update({k: v for k, v in finetuned_model_config(model).items() if k in HEAD_FIELDS})
    write_torch_checkpoint(path, {"state_dict": {"model." + k: v for k, v in sd.items()},
                                  "hyper_parameters": {"model_config": model_config}})


def finetuned_model_config(model: DownstreamModel) -> dict[str, Any]:
    """JSON-able description of a downstream model (rebuild it with `finetuned_model_from_config`)."""
    config: dict[str, Any] = {"task": "pick" if isinstance(model, SeisLMPicker) else "classify",
                              "wav2vec2": {k: list(v) if isinstance(v, tuple) else v
                                           for k, v in model.cfg.to_dict().items()},
                              "use_weighted_layer_sum": model.use_weighted_layer_sum,
                              "head_dropout_rate": model.head_dropout_rate}
    if isinstance(model, SeisLMPicker):
        config["num_labels"] = model.num_labels
    else:
        config.update(num_classes=model.num_classes, classifier_proj_size=model.classifier_proj_size)
    return config


def finetuned_model_from_config(config: Mapping[str, Any]) -> DownstreamModel:
    """The downstream model `finetuned_model_config` described; CheckpointError on anything else."""
    if not isinstance(config, Mapping) or config.get("task") not in TASKS:
        task = config.get("task") if isinstance(config, Mapping) else config
        raise CheckpointError(f"not a SeisLM downstream config: task {task!r} is not one of {sorted(TASKS)}")
    task = config["task"]
    allowed = {"task", "wav2vec2", "use_weighted_layer_sum", "head_dropout_rate",
               *(("num_labels",) if task == "pick" else ("num_classes", "classifier_proj_size"))}
    unknown = sorted(set(config) - allowed)
    if unknown or not isinstance(config.get("wav2vec2"), Mapping):
        raise CheckpointError(f"{task} config: unknown fields {unknown} or no 'wav2vec2' mapping")
    head = {name: HEAD_FIELDS[name](name, value) for name, value in config.items() if name in HEAD_FIELDS}
    try:
        cfg = Wav2Vec2Config.from_dict(dict(config["wav2vec2"]))
        return TASKS[task](cfg, **head)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"invalid {task} config: {exc}") from exc
