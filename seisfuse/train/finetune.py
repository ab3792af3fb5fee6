"""Fine-tuning tasks: SFM segmentation / regression and SeisLM picking / classification.

They plug into the one training loop like the pretraining tasks (seisfuse.train.tasks) and add
what the downstream heads need: BatchNorm statistics as model state (`init_model_state`,
`stateful_loss`), dropout / stochastic depth from the step key, a pretrained trunk or a whole
fine-tuned model as the starting point (`init`), the originals' freezing options through the
optimizer labels ('frozen', or ':delayed' to unfreeze at `optimizer.unfreeze_step`), and an
inference `predict` used by `seisfuse evaluate` and `seisfuse pick`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import path_aware_map

from seisfuse.data.transforms import WINDOW
from seisfuse.train.optim import DELAYED, decay_label, mae_layer_scales, mae_param_labels

Batch = Mapping[str, Any]
SFM_TASKS = ("segment", "regress")
SEISLM_TASKS = ("pick", "classify")
# Which `seisfuse convert` / `seisfuse train` kinds can start each family.
TRUNK_KINDS = {"sfm": ("sfm", "mae"), "seislm": ("seislm",)}


def _decay_labels(params: Any) -> Any:
    return path_aware_map(decay_label, params)


@dataclasses.dataclass(frozen=True)
class FineTuneTask:
    """What the four downstream tasks share: init from converted weights, model state, labels.

    `trunk` names the pretrained part of the params tree ('encoder' for SFM, 'wav2vec2' for
    SeisLM); `freeze` lists its frozen sub-trees (paths inside the trunk, '' = all of it).
    """

    model: nn.Module
    init: str = ""  # a `seisfuse convert` folder or a `seisfuse train` run ("" = from scratch)
    freeze: tuple[str, ...] = ()
    delay_trunk: bool = False  # trunk trains from optimizer.unfreeze_step on
    name: str = "finetune"
    data_task: str = ""
    family: str = "sfm"
    trunk: str = "encoder"
    optional_trunk_keys: tuple[str, ...] = ()

    # ------------------------------------------------------------------ parameters and state

    def example_input(self) -> jax.Array:
        raise NotImplementedError

    def _fresh_variables(self, key: jax.Array) -> dict[str, Any]:
        return self.model.init({"params": key, "dropout": key}, self.example_input(), train=False)

    def _initial_variables(self, key: jax.Array) -> dict[str, Any]:
        variables = dict(self._fresh_variables(key))
        if not self.init:
            return variables
        kind, meta, weights = _read_init(self.init)
        if kind.endswith("-finetuned"):
            return _whole_model(self, kind, meta, weights, variables)
        if kind not in TRUNK_KINDS[self.family]:
            raise ValueError(f"init {self.init} holds {kind!r} weights; a {self.name} model starts from "
                             f"{' or '.join(TRUNK_KINDS[self.family])} weights or a fine-tuned {self.family} "
                             "model")
        params = dict(nn.unbox(variables["params"]))
        trunk = dict(self.trunk_from(meta, weights))
        for key in self.optional_trunk_keys:  # in one model's trunk and not the other's
            if key in params[self.trunk] and key not in trunk:
                trunk[key] = params[self.trunk][key]
            elif key not in params[self.trunk]:
                trunk.pop(key, None)
        params[self.trunk] = _checked_like(trunk, params[self.trunk], self.init)
        return {**variables, "params": jax.tree.map(_rebox, variables["params"], params,
                                                     is_leaf=lambda x: isinstance(x, nn.Partitioned))}

    def trunk_from(self, meta: Mapping[str, Any], weights: Any) -> Any:
        """The trunk's params from pretrained weights (converted or trained with this repo)."""
        raise NotImplementedError

    def init_params(self, key: jax.Array) -> Any:
        return self._initial_variables(key)["params"]

    def init_model_state(self, key: jax.Array) -> Any:
        return {k: v for k, v in self._initial_variables(key).items() if k != "params"}

    def param_labels(self, params: Any) -> Any:
        labels = dict(_decay_labels(params))
        trunk = self.trunk_labels(params[self.trunk])
        if self.delay_trunk:
            trunk = jax.tree.map(lambda label: label if label == "frozen" else label + DELAYED, trunk)
        for sub in self.freeze:
            trunk = _freeze(trunk, sub)
        labels[self.trunk] = trunk
        return labels

    def trunk_labels(self, trunk: Any) -> Any:
        return _decay_labels(trunk)

    def layer_scales(self, params: Any, layer_decay: float) -> Any:
        return None

    # ------------------------------------------------------------------ loss and inference

    def apply(self, params: Any, model_state: Any, inputs: jax.Array, key: jax.Array | None,
              train: bool) -> tuple[jax.Array, Any]:
        variables = {"params": params, **model_state}
        if not train:
            return self.model.apply(variables, inputs, train=False), model_state
        out, updates = self.model.apply(variables, inputs, train=True, rngs={"dropout": key},
                                        mutable=list(model_state))
        return out, {**model_state, **updates}

    def loss(self, params: Any, batch: Batch, key: jax.Array, step: jax.Array) -> tuple[jax.Array, dict]:
        raise TypeError(f"{self.name} carries BatchNorm statistics: the loop calls stateful_loss")

    def stateful_loss(self, params: Any, model_state: Any, batch: Batch, key: jax.Array,
                      step: jax.Array) -> tuple[jax.Array, tuple[dict, Any]]:
        out, model_state = self.apply(params, model_state, self.model_input(batch), key, train=True)
        loss, metrics = self.objective(out, batch)
        return loss, (metrics, model_state)

    def model_input(self, batch: Batch) -> jax.Array:
        raise NotImplementedError

    def objective(self, out: jax.Array, batch: Batch) -> tuple[jax.Array, dict]:
        raise NotImplementedError

    def predict(self, params: Any, model_state: Any, batch: Batch) -> jax.Array:
        """The model's output for a prepared batch in inference mode (running statistics)."""
        return self.apply(params, model_state, self.model_input(batch), None, train=False)[0]

    def flops_per_example(self) -> float:
        """XLA's FLOP count of one forward pass, times 3 for forward + backward."""
        return 3.0 * _forward_flops(self.model, self.example_input().shape)


# ====================================================================== SFM


@dataclasses.dataclass(frozen=True)
class SFMFineTune(FineTuneTask):
    """SFM segmentation (`segment`: logits, pixel cross-entropy) or regression (`regress`: SFM's
    (1 − a)·MSE + a·(1 − MS-SSIM), a = `msssim_weight`, 0.5 in the original, 0.1 for
    interpolation). Regression options: `residual` (the model predicts image − target, as SFM's
    denoising: the clean estimate is image − output) and `interpolation` (traces removed by SFM's
    random trace mask; the known traces are copied into the output, and the loss compares the
    completed image with the full one, MS-SSIM's value range read from the full image as the
    original's argument order does)."""

    num_classes: int = 0
    residual: bool = False
    interpolation: bool = False
    msssim_weight: float = 0.0
    layer_decay_depth: int = 0

    @property
    def cfg(self) -> Any:
        return self.model.cfg

    def example_input(self) -> jax.Array:
        c = self.cfg
        return jnp.zeros((1, c.img_size, c.img_size, c.in_chans), jnp.float32)

    def trunk_from(self, meta: Mapping[str, Any], weights: Any) -> Any:
        from seisfuse.models.mae import MAEConfig
        from seisfuse.models.sfm_heads import encoder_params_from_mae

        mae_cfg = MAEConfig.from_dict(dict(meta))
        _, encoder = encoder_params_from_mae(mae_cfg, weights, self.cfg.img_size)
        return encoder

    def trunk_labels(self, trunk: Any) -> Any:
        return mae_param_labels(trunk, self.cfg.learned_pos_embed)

    def param_labels(self, params: Any) -> Any:
        """As the base, plus 'frozen' for the weights SFM's files hold but its forward never reads
        (`head`, and the segmenter's `segmentation_head`): weight decay would shrink them."""
        labels = super().param_labels(params)
        unused = ("head", "segmentation_head") if self.name == "segment" else ("head",)
        return {k: jax.tree.map(lambda _: "frozen", v) if k in unused else v for k, v in labels.items()}

    def layer_scales(self, params: Any, layer_decay: float) -> Any:
        scales = jax.tree.map(lambda _: 1.0, params)
        return {**scales, "encoder": mae_layer_scales(params["encoder"], self.cfg.depth, layer_decay)}

    def model_input(self, batch: Batch) -> jax.Array:
        if self.interpolation:
            return batch["image"] * batch["trace_mask"]
        return batch["image"]

    def objective(self, out: jax.Array, batch: Batch) -> tuple[jax.Array, dict]:
        if self.name == "segment":
            return segmentation_loss(out, batch["label"])
        from seisfuse.eval.metrics import regression_loss

        out = out.astype(jnp.float32)
        if self.interpolation:
            first, second = batch["target"], self.estimate(out, batch)
        else:
            first, second = out, batch["image"] - batch["target"] if self.residual else batch["target"]
        mse = jnp.mean((first - second) ** 2)
        return regression_loss(first, second, self.msssim_weight), {"mse": mse}

    def estimate(self, out: jax.Array, batch: Batch) -> jax.Array:
        """The prediction of the target itself: denoising, image − predicted noise; interpolation,
        the known traces copied into the output."""
        if self.residual:
            return batch["image"] - out
        if self.interpolation:
            mask = batch["trace_mask"]
            return out * (1.0 - mask) + batch["image"] * mask
        return out

    def prepare(self, raw: Batch, rngs: Sequence[np.random.Generator]) -> dict[str, np.ndarray]:
        images = np.asarray(raw["image"], np.float32)
        out = {"image": images}
        if self.name == "segment":
            labels = np.asarray(raw["label"])
            check_labels(labels, self.num_classes)
            out["label"] = labels.astype(np.int32)
            return out
        out["target"] = np.asarray(raw["target"], np.float32)
        if self.interpolation:
            from seisfuse.models.sfm_heads import interpolation_trace_mask

            width = images.shape[2]
            out["trace_mask"] = np.concatenate(
                [interpolation_trace_mask(rng, 1, width) for rng in rngs]).astype(np.float32)
        return out

    def random_example(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        c = self.cfg
        image = rng.standard_normal((c.img_size, c.img_size, c.in_chans), np.float32)
        if self.name == "segment":
            labels = rng.integers(0, self.num_classes, image.shape[:2]).astype(np.int32)
            return {"image": image, "label": labels}
        return {"image": image, "target": rng.standard_normal(self.model_output_shape(), np.float32)}

    def model_output_shape(self) -> tuple[int, ...]:
        c = self.cfg
        return (c.img_size, c.img_size, self.model.out_channels)


def segmentation_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict]:
    """Mean pixel cross-entropy (torch's CrossEntropyLoss) and pixel accuracy."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    return -jnp.mean(picked), {"pixel_accuracy": accuracy}


def check_labels(labels: np.ndarray, num_classes: int) -> None:
    """Label maps must hold class ids in [0, num_classes): anything else is a data/config mismatch."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels range over [{labels.min()}, {labels.max()}] but the model has "
                         f"{num_classes} classes (ids 0..{num_classes - 1}): set model.num_classes or fix "
                         "data.label_key")


# ====================================================================== SeisLM


@dataclasses.dataclass(frozen=True)
class SeisLMFineTune(FineTuneTask):
    """SeisLM phase picking (`pick`: per-sample P/S/noise probabilities, vector cross-entropy) or
    event classification (`classify`: logits, cross-entropy)."""

    num_classes: int = 3
    num_samples: int = WINDOW
    family: str = "seislm"
    trunk: str = "wav2vec2"
    # SeisLM's time-masking embedding: in pretraining and classifier trunks, deleted from the picker's.
    optional_trunk_keys: tuple[str, ...] = ("masked_spec_embed",)

    @property
    def cfg(self) -> Any:
        return self.model.cfg

    def example_input(self) -> jax.Array:
        return jnp.zeros((1, self.num_samples, self.cfg.input_channels), jnp.float32)

    def trunk_from(self, meta: Mapping[str, Any], weights: Any) -> Any:
        return weights["wav2vec2"]

    def model_input(self, batch: Batch) -> jax.Array:
        return batch["waveform"]

    def objective(self, out: jax.Array, batch: Batch) -> tuple[jax.Array, dict]:
        if self.name == "pick":
            from seisfuse.models.seislm_heads import vector_cross_entropy

            return vector_cross_entropy(out, batch["labels"]), {}
        labels = batch["label"].astype(jnp.int32)
        logp = jax.nn.log_softmax(out.astype(jnp.float32), axis=-1)
        loss = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))
        return loss, {"accuracy": jnp.mean(jnp.argmax(out, axis=-1) == labels)}

    def prepare(self, raw: Batch, rngs: Sequence[np.random.Generator]) -> dict[str, np.ndarray]:
        out = {"waveform": np.asarray(raw["waveform"], np.float32)}
        if self.name == "pick":
            out["labels"] = np.asarray(raw["labels"], np.float32)
            for key in ("p_sample", "s_sample"):
                if key in raw:
                    out[key] = np.asarray(raw[key], np.float32)
        else:
            labels = np.asarray(raw["label"])
            check_labels(labels, self.num_classes)
            out["label"] = labels.astype(np.int32)
        return out

    def random_example(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        waveform = rng.standard_normal((self.num_samples, self.cfg.input_channels), np.float32)
        if self.name == "pick":
            from seisfuse.data.transforms import pick_labels

            p = float(rng.uniform(300, 1500))
            return {"waveform": waveform, "labels": pick_labels(p, p + float(rng.uniform(100, 900)),
                                                                length=self.num_samples),
                    "p_sample": np.float32(p)}
        return {"waveform": waveform, "label": np.int32(rng.integers(0, self.num_classes))}


# ====================================================================== building from a config


def make_finetune_task(config: Mapping[str, Any]) -> FineTuneTask:
    """The fine-tuning task an experiment config names (configs/sfm_finetune.py,
    configs/seislm_finetune.py): `task`, `model` (the head and its trunk), `init`, `freeze`."""
    task, model = config["task"], dict(config["model"])
    init = str(config["init"])
    unfreeze = int(config["optimizer"]["unfreeze_step"]) > 0
    if task in SFM_TASKS:
        from seisfuse.models.mae import MAEConfig
        from seisfuse.models.sfm_heads import SFMRegressor, SFMSegmenter

        head = dict(model.pop("head"))
        freeze = model.pop("freeze")
        if freeze not in ("none", "encoder"):
            raise ValueError(f"model.freeze {freeze!r}: 'none' or 'encoder' (SFM's --forzen)")
        drop_path = float(head.pop("drop_path"))
        cfg = MAEConfig.preset(model.pop("preset"), decoder=False, **model)
        if task == "segment":
            num_classes = int(head.pop("num_classes"))
            net = SFMSegmenter(cfg, num_classes=num_classes, drop_path_rate=drop_path, **head)
            loss: dict[str, Any] = {}
        else:
            num_classes = 0
            regress = config["regress"]
            loss = {"residual": bool(regress["residual"]), "interpolation": bool(regress["interpolation"]),
                    "msssim_weight": float(regress["msssim_weight"])}
            net = SFMRegressor(cfg, drop_path_rate=drop_path, **head)
        return SFMFineTune(net, init=init, freeze=("",) if freeze == "encoder" else (), delay_trunk=unfreeze,
                           name=task, data_task=task, num_classes=num_classes, **loss)
    if task in SEISLM_TASKS:
        from seisfuse.models.seislm_heads import SeisLMClassifier, SeisLMPicker
        from seisfuse.models.wav2vec2 import Wav2Vec2Config

        head = dict(model.pop("head"))
        freeze = model.pop("freeze")
        choices = {"none": (), "feature_encoder": ("feature_extractor",), "base": ("",)}
        if freeze not in choices:
            raise ValueError(f"model.freeze {freeze!r}: one of {sorted(choices)}")
        cfg = Wav2Vec2Config.preset(model.pop("preset"), **model)
        if task == "pick":
            net = SeisLMPicker(cfg, **head)
            num_classes = 3
        else:
            net = SeisLMClassifier(cfg, **head)
            num_classes = int(head["num_classes"])
        return SeisLMFineTune(net, init=init, freeze=choices[freeze], delay_trunk=unfreeze, name=task,
                              data_task="picking" if task == "pick" else "classify",
                              num_classes=num_classes, num_samples=int(config["num_samples"]))
    raise ValueError(f"unknown fine-tuning task {task!r}: one of {SFM_TASKS + SEISLM_TASKS}")


# ====================================================================== helpers


def _freeze(labels: Any, sub: str) -> Any:
    """'frozen' for the sub-tree at the '/'-separated path `sub` ('' = everything)."""
    if not sub:
        return jax.tree.map(lambda _: "frozen", labels)
    head, _, rest = sub.partition("/")
    if head not in labels:
        raise ValueError(f"cannot freeze {sub!r}: the trunk has no {head!r} (has {sorted(labels)})")
    return {**labels, head: _freeze(labels[head], rest)}


def _rebox(box: Any, value: Any) -> Any:
    return box.replace_boxed(value) if isinstance(box, nn.Partitioned) else value


def _checked_like(new: Any, reference: Any, source: str) -> Any:
    """`new` cast like `reference` after checking that every leaf has the same path and shape."""
    new_flat = dict(jax.tree_util.tree_flatten_with_path(new)[0])
    ref_flat = dict(jax.tree_util.tree_flatten_with_path(reference)[0])
    missing = [jax.tree_util.keystr(k) for k in ref_flat if k not in new_flat]
    extra = [jax.tree_util.keystr(k) for k in new_flat if k not in ref_flat]
    wrong = [f"{jax.tree_util.keystr(k)}: {np.shape(new_flat[k])} vs {np.shape(v)}"
             for k, v in ref_flat.items() if k in new_flat and np.shape(new_flat[k]) != np.shape(v)]
    if missing or extra or wrong:
        parts = [f"missing {missing[:6]}" if missing else "", f"unexpected {extra[:6]}" if extra else "",
                 f"wrong shapes {wrong[:6]}" if wrong else ""]
        raise ValueError(f"weights from {source} do not fit this model's configuration: "
                         + "; ".join(p for p in parts if p) + " (check model.preset and the head settings)")
    return jax.tree.map(lambda n, r: jnp.asarray(n, r.dtype), new, reference)


def _whole_model(task: FineTuneTask, kind: str, meta: Mapping[str, Any], weights: Any,
                 fresh: dict[str, Any]) -> dict[str, Any]:
    """A fine-tuned model's variables as the start; its head must match the config's."""
    if kind != f"{task.family}-finetuned":
        raise ValueError(f"init {task.init} is a {kind!r} model, not a fine-tuned {task.family} model")
    if meta.get("task") != task.name:
        raise ValueError(f"init {task.init} is a fine-tuned {meta.get('task')!r} model; this run is "
                         f"a {task.name!r} run")
    plain = {k: nn.unbox(v) for k, v in fresh.items()}
    values = _checked_like({k: weights[k] for k in plain if k in weights}, plain, task.init)
    return {**fresh, **{k: jax.tree.map(_rebox, fresh[k], values[k],
                                        is_leaf=lambda x: isinstance(x, nn.Partitioned)) for k in values}}


@functools.lru_cache(maxsize=4)
def _read_init(directory: str) -> tuple[str, dict[str, Any], Any]:
    """(kind, model config dict, weights as numpy) of a `seisfuse convert` folder or a `seisfuse
    train` run (its latest checkpoint's params), read once per process. The first call usually
    comes from inside `jax.eval_shape`/`jit` of init: the read runs eagerly all the same."""
    with jax.ensure_compile_time_eval():
        kind, config, weights = _read_init_eagerly(directory)
    return kind, config, jax.tree.map(np.asarray, weights)


def _read_init_eagerly(directory: str) -> tuple[str, dict[str, Any], Any]:
    from seisfuse.convert.common import CONFIG_FILE, PARAMS_DIR, load_converted

    path = Path(directory)
    if (path / PARAMS_DIR).is_dir() and (path / CONFIG_FILE).is_file():
        return load_converted(path)
    if (path / "checkpoints").is_dir():
        from seisfuse.train.checkpoint import restore_params
        from seisfuse.train.config import read_run_config

        config = read_run_config(path)
        model = dict(config["model"])
        if config["task"] == "mae":
            from seisfuse.models.mae import MAEConfig

            cfg = MAEConfig.preset(model.pop("preset"), **model).to_dict()
            return "mae", cfg, restore_params(path / "checkpoints")
        if config["task"] == "seislm":
            return "seislm", {}, restore_params(path / "checkpoints")
        raise ValueError(f"init {directory} is a {config['task']!r} run; fine-tuning starts from an MAE "
                         "or SeisLM pretraining run or a `seisfuse convert` folder")
    raise FileNotFoundError(f"init {directory}: neither a `seisfuse convert` folder (config.json + params/) "
                            "nor a training run (config.json + checkpoints/)")


def _forward_flops(model: nn.Module, shape: tuple[int, ...]) -> float:
    variables = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, jnp.zeros(shape),
                                                  train=False))
    lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, jnp.zeros(shape))
    analysis = lowered.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0]
    return float((analysis or {}).get("flops", 0.0))
