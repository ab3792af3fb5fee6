"""`seisfuse evaluate RUN`: a fine-tuning run's metrics and figures on held-out data.

Restores the run's latest params and BatchNorm statistics (no trainer, no optimizer state), runs
one ordered pass over the evaluation split in inference mode, accumulates the task's metrics
(segmentation confusion matrix, regression MSE/PSNR/MS-SSIM, pick residuals and detection,
classification accuracy/F1) and writes RUN/eval/metrics.json plus the SFM-notebook-style figures.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from seisfuse.eval import metrics as M
from seisfuse.eval import plots

FIGURE_EXAMPLES = 4


def evaluate_run(run_dir: str | Path, *, data_path: str | None = None, overrides: Sequence[str] = (),
                 out_dir: str | Path | None = None, max_examples: int | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Evaluate the run in `run_dir`; returns the metrics written to OUT/metrics.json
    (OUT = run_dir/eval by default). `data_path` replaces the run's data (an SFM task folder, a
    SeisBench dataset or a record table, checked against the run's modality); `overrides` are
    'data.key=value' settings."""
    from seisfuse.train.checkpoint import probe_writable
    from seisfuse.train.config import read_run_config
    from seisfuse.train.tasks import make_task

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if config["task"] not in EVALUATORS:
        raise ValueError(f"{run_dir} is a {config['task']!r} run; `seisfuse evaluate` evaluates fine-tuning "
                         f"runs ({', '.join(EVALUATORS)}): use `seisfuse demo`/`embed` for alignment runs")
    config = aim_data(config, run_dir, data_path, overrides)
    out_dir = Path(out_dir) if out_dir else run_dir / "eval"
    if (out_dir / "metrics.json").exists() and not overwrite:
        raise FileExistsError(f"{out_dir / 'metrics.json'} exists: pass --overwrite or choose --out")
    probe_writable(out_dir)
    task = make_task(config)
    params, model_state, step = restore_variables(run_dir)
    evaluator = EVALUATORS[config["task"]](task, config)
    predict = jax.jit(task.predict)
    seen = 0
    for raw in eval_batches(task, config, max_examples):
        batch = task.prepare(raw, [np.random.default_rng([config["seed"], 2, seen + i])
                                   for i in range(len(next(iter(raw.values()))))])
        output = np.asarray(predict(params, model_state, batch))
        evaluator.add({k: np.asarray(v) for k, v in batch.items()}, output)
        seen += len(output)
    if seen == 0:
        raise ValueError(f"the evaluation data of {run_dir} hold no examples")
    result = {"run": str(run_dir), "step": step, "examples": seen, **evaluator.result()}
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    evaluator.figures(out_dir / "figures")
    _write_json(out_dir / "metrics.json", result)
    return result


IMAGE_TASKS = ("mae", "segment", "regress")  # the others read waveforms (align: pairs)
SFM_TASK_OF_LABEL = {"facies": "facies", "salt": "salt", "clean": "denoise", "reflectivity": "reflectivity",
                     "image": "interpolation"}


def data_modality(path: str | Path) -> tuple[str, str]:
    """(modality, source kind) of a --data path: an SFM .dat task folder holds images; a SeisBench
    folder (metadata*.csv) or a pick table (.csv) holds waveforms."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--data {path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "waveform", "pick_table"
    else:
        children = list(path.iterdir())
        if any(c.is_file() and c.name.startswith("metadata") and c.suffix == ".csv" for c in children):
            return "waveform", "seisbench"
        inner = [g for c in children if c.is_dir() for g in c.iterdir()]
        if any(p.suffix == ".dat" for p in children + inner):
            return "image", "dat"
    raise ValueError(f"--data {path}: not a data set seisfuse reads here; expected an SFM .dat task folder "
                     "(images), a SeisBench folder with metadata.csv or a pick table .csv (waveforms)")


def aim_data(config: Any, run_dir: str | Path, data: str | Path | None, overrides: Sequence[str]) -> Any:
    """`config` with its data section replaced by the `data` path (its kind detected and checked
    against the run's modality: a run is never silently evaluated on its own data instead), then
    the 'data.key=value' `overrides`."""
    from seisfuse.train.config import apply_overrides

    task = config["task"]
    if data is not None:
        if task == "align":
            raise ValueError(f"{run_dir} is an alignment run, viewed on held-out generated pairs; --data "
                             "takes the image data of an MAE/segment/regress run or the waveforms of a "
                             "SeisLM/pick/classify run")
        modality, source = data_modality(data)
        expected = "image" if task in IMAGE_TASKS else "waveform"
        if modality != expected:
            wanted = ("seismic images (an SFM .dat task folder)" if expected == "image"
                      else "waveforms (a SeisBench folder or a pick table .csv)")
            raise ValueError(f"--data {data} holds {modality}s ({source}), but {run_dir} is a {task!r} "
                             f"run, which reads {wanted}")
        label_key = config.data.label_key
        config.data.source, config.data.path = source, str(data)
        config.data.label_key = "label" if task == "classify" and source == "pick_table" else None
        if source == "pick_table":
            config.data.eval_path = str(data)
        if source == "dat":  # every key the source reads exists, so --data.key=value can set it
            config.data.task = config.data.get("task") or SFM_TASK_OF_LABEL.get(label_key)
            config.data.size = config.data.get("size")
            config.data.train_count = config.data.get("train_count")
    config = apply_overrides(config, overrides)
    if config.data.source == "dat" and not config.data.get("task"):
        raise ValueError(f"--data {data} is an SFM task folder: name its task with --data.task=facies, salt, "
                         "denoise, reflectivity or interpolation")
    return config


def restore_variables(run_dir: Path) -> tuple[Any, Any, int]:
    """(params, model state, step) of the run's newest checkpoint that restores."""
    from seisfuse.train.checkpoint import restore_items

    items, step = restore_items(run_dir / "checkpoints", ("params", "model_state"))
    return items["params"], items["model_state"], step


def eval_batches(task: Any, config: Mapping[str, Any], max_examples: int | None) -> Any:
    """One ordered pass over the held-out split, without augmentation."""
    from seisfuse.data.sources import make_source
    from seisfuse.train.loop import config_pipeline

    source = make_source(config["data"], split="eval")
    batch_size = min(int(config["batch_size"]), 32)
    ds = config_pipeline(source, task.data_task, config, batch_size, shuffle=False, num_epochs=1,
                         augment=False, drop_remainder=False, shard_index=0, shard_count=1)
    seen = 0
    for raw in ds:
        if max_examples is not None and seen >= max_examples:
            return
        yield raw
        seen += len(next(iter(raw.values())))


# ====================================================================== per-task accumulators


class SegmentationEval:
    def __init__(self, task: Any, config: Mapping[str, Any]):
        self.task, self.classes = task, task.num_classes
        self.confusion = np.zeros((self.classes, self.classes), np.int64)
        self.examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, batch: Mapping[str, np.ndarray], logits: np.ndarray) -> None:
        pred = logits.argmax(-1)
        self.confusion += M.confusion_matrix(pred, batch["label"], self.classes)
        for i in range(min(len(pred), FIGURE_EXAMPLES - len(self.examples))):
            self.examples.append((batch["image"][i], batch["label"][i], pred[i]))

    def result(self) -> dict[str, Any]:
        values = M.segmentation_metrics_from_confusion(self.confusion)
        return {**M.to_jsonable(values), "confusion_matrix": self.confusion.tolist()}

    def figures(self, folder: Path) -> None:
        images, truths, preds = (np.stack(x) for x in zip(*self.examples, strict=True))
        plots.segmentation_grid(images, truths, preds, folder / "segmentation_examples.png", self.classes)
        iou = M.segmentation_metrics_from_confusion(self.confusion)["IoU"]
        plots.iou_bars(np.asarray(iou), folder / "iou_per_class.png")
        plots.confusion_matrix_plot(self.confusion, folder / "confusion_matrix.png")


class RegressionEval:
    """Per-batch metrics as SFM's evaluateRegression computes them, averaged with the batch sizes as
    weights (its MetricLogger's eval-set figures)."""

    def __init__(self, task: Any, config: Mapping[str, Any]):
        self.task = task
        self.batches: list[dict[str, Any]] = []
        self.sizes: list[int] = []
        self.examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, batch: Mapping[str, np.ndarray], output: np.ndarray) -> None:
        estimate = np.asarray(self.task.estimate(output, batch))
        target = batch["target"]
        self.batches.append(M.regression_metrics(estimate, target))
        self.sizes.append(len(output))
        for i in range(min(len(output), FIGURE_EXAMPLES - len(self.examples))):
            shown = batch["image"][i] * batch["trace_mask"][i] if "trace_mask" in batch else batch["image"][i]
            self.examples.append((shown, target[i], estimate[i]))

    def result(self) -> dict[str, Any]:
        return M.average_batches(self.batches, self.sizes)

    def figures(self, folder: Path) -> None:
        images, targets, preds = (np.stack(x) for x in zip(*self.examples, strict=True))
        plots.regression_grid(images, targets, preds, folder / "regression_examples.png")


class PickEval:
    def __init__(self, task: Any, config: Mapping[str, Any]):
        self.task = task
        self.probs: list[np.ndarray] = []
        self.picks: dict[str, list[np.ndarray]] = {"p_sample": [], "s_sample": []}
        self.waveforms: list[np.ndarray] = []

    def add(self, batch: Mapping[str, np.ndarray], probs: np.ndarray) -> None:
        self.probs.append(probs.astype(np.float32))
        for key in self.picks:
            self.picks[key].append(np.asarray(batch.get(key, np.full(len(probs), np.nan)), np.float64))
        if len(self.waveforms) < FIGURE_EXAMPLES:
            self.waveforms.extend(batch["waveform"][: FIGURE_EXAMPLES - len(self.waveforms)])

    def result(self) -> dict[str, Any]:
        from seisfuse.data.transforms import SAMPLING_RATE

        probs = np.concatenate(self.probs)
        p, s = (np.concatenate(self.picks[k]) for k in ("p_sample", "s_sample"))
        return M.to_jsonable(M.pick_metrics(probs, p, s, SAMPLING_RATE))

    def figures(self, folder: Path) -> None:
        from seisfuse.data.transforms import SAMPLING_RATE

        probs = np.concatenate(self.probs)
        p, s = (np.concatenate(self.picks[k]) for k in ("p_sample", "s_sample"))
        predicted_picks = M.predicted_picks(probs)
        for i, waveform in enumerate(self.waveforms):
            predicted = {phase: int(predicted_picks[i, j]) for j, phase in enumerate("PS")}
            plots.pick_plot(waveform, probs[i], {"P": p[i], "S": s[i]}, predicted,
                            folder / f"picks_{i}.png", SAMPLING_RATE)
        residuals = {phase: (predicted_picks[:, j] - truth)[np.isfinite(truth)] / SAMPLING_RATE
                     for j, (phase, truth) in enumerate((("P", p), ("S", s)))}
        plots.residual_histograms(residuals, folder / "residuals.png")


class ClassifyEval:
    def __init__(self, task: Any, config: Mapping[str, Any]):
        self.task = task
        self.logits: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def add(self, batch: Mapping[str, np.ndarray], logits: np.ndarray) -> None:
        self.logits.append(logits)
        self.labels.append(batch["label"])

    def result(self) -> dict[str, Any]:
        logits, labels = np.concatenate(self.logits), np.concatenate(self.labels)
        return M.to_jsonable(M.classification_metrics(logits, labels, self.task.num_classes))

    def figures(self, folder: Path) -> None:
        cm = M.classification_metrics(np.concatenate(self.logits), np.concatenate(self.labels),
                                      self.task.num_classes)["confusion_matrix"]
        plots.confusion_matrix_plot(np.asarray(cm), folder / "confusion_matrix.png")


EVALUATORS = {"segment": SegmentationEval, "regress": RegressionEval, "pick": PickEval,
              "classify": ClassifyEval}


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


def load_predictor(run_dir: str | Path, *, task: str, batch_size: int = 16) -> Any:
    """`predict(inputs) -> outputs` (numpy, in chunks of `batch_size`) of a fine-tuning run's
    latest checkpoint in inference mode; refuses a run of another task (e.g. a classifier where a
    picker is needed)."""
    from seisfuse.train.config import read_run_config
    from seisfuse.train.tasks import make_task

    config = read_run_config(run_dir)
    if config["task"] != task:
        raise ValueError(f"{run_dir} is a {config['task']!r} run; this needs a {task!r} run")
    model_task = make_task(config)
    params, model_state, _ = restore_variables(Path(run_dir))
    forward = jax.jit(lambda x: model_task.model.apply({"params": params, **model_state}, x, train=False))

    def predict(inputs: np.ndarray) -> np.ndarray:
        """Chunks of exactly `batch_size` (the last one zero-padded): one compiled shape."""
        inputs = np.asarray(inputs, np.float32)
        outputs = []
        for i in range(0, len(inputs), batch_size):
            chunk = inputs[i:i + batch_size]
            pad = np.zeros((batch_size - len(chunk), *chunk.shape[1:]), np.float32)
            padded = np.concatenate([chunk, pad])
            outputs.append(np.asarray(forward(padded))[:len(chunk)])
        return np.concatenate(outputs)

    return predict
