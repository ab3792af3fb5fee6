"""`seisfuse view RUN`: one self-contained HTML report of what a run's model does.

The page (RUN/report.html by default) opens offline in any browser and can be shared as one file:
figures are PNGs inlined as base64, the numbers behind them are embedded as JSON, and a few lines
of plain JavaScript sort and filter the tables (example tables start worst first). Sections follow
the run's task:

- MAE: input / masked input / reconstruction / target of held-out images, the loss curve;
- segmentation, regression: image, truth, prediction and error side by side with per-example
  PA/mIoU or PSNR/SSIM, per-class IoU bars and the confusion matrix;
- picking: records with the three output curves and the true and predicted picks, onset
  residual histograms; classification: records with their classes, the confusion matrix;
- alignment: queries with their top-k of the other modality, the similarity matrix, the joint
  space by PCA and by t-SNE (scikit-learn), recall@K against chance;
- experiment folders (results.json of seeded runs): mean and 95 % CI per task, arm and metric,
  and a bar chart;
- always: the command that made the run (WORKDIR/command.json, written by the CLI), software
  versions, the config, the metrics files and the training curves of the TensorBoard events.

Model outputs come from the run's newest intact checkpoint on held-out data, through the same
machinery as `seisfuse evaluate` (`restore_variables`, `eval_batches`, the task's `predict`).
A partial run (killed mid-training) gets a report of what exists; the collectors (`*_examples`,
`alignment_data`, `experiment_table`, `read_scalars`) are pure functions of arrays and files.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import platform
import shlex
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from etils import epath

COMMAND_FILE = "command.json"
RESULTS_FILE = "results.json"  # a multimodal experiment: records {task, arm, seed, metric, value}
SUMMARY_FILE = "summary.md"
REPORT_FILE = "report.html"
TASKS = ("mae", "seislm", "align", "segment", "regress", "pick", "classify")
MAX_EXAMPLES = 256  # one page stays small enough to open and share
VERSION_PACKAGES = ("seisfuse", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "grain",
                    "matplotlib", "scikit-learn")


# ====================================================================== the command that made a run


def software_versions() -> dict[str, str]:
    """Python, platform and the versions of the packages a run's numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def record_command(workdir: str | Path, argv: Sequence[str], *, resume: bool = False) -> None:
    """Append this invocation (argv, time, versions) to WORKDIR/command.json.

    A folder that holds no run yet (no checkpoint step, no metrics.json) starts a fresh record, so a
    command that failed before training leaves nothing behind once the run is made; an existing
    run only records `--resume` invocations (train and demo refuse the others). Local or gs://;
    an unwritable folder fails here with the engine's message (`probe_writable`)."""
    from seisfuse.train.checkpoint import probe_writable

    probe_writable(workdir)
    workdir = epath.Path(workdir)
    path = workdir / COMMAND_FILE
    entry = {"argv": ["seisfuse", *argv], "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "cwd": str(Path.cwd()), "versions": software_versions()}
    if not _holds_run(workdir):
        records = [entry]
    elif resume:
        records = [*_read_json_list(path), entry]
    else:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(records, indent=2))
    tmp.replace(path)


def _holds_run(workdir: epath.Path) -> bool:
    return (workdir / "metrics.json").exists() or bool(checkpoint_steps(workdir))


def _read_json_list(path: Any) -> list[Any]:
    if not path.is_file():
        return []
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return []  # a damaged record is replaced, never trusted
    return value if isinstance(value, list) else []


def read_commands(run_dir: str | Path) -> list[dict[str, Any]]:
    """The recorded invocations of a run, oldest first; entries of the wrong shape are dropped."""
    records = _read_json_list(Path(run_dir) / COMMAND_FILE)
    return [r for r in records if isinstance(r, dict) and isinstance(r.get("argv"), list)
            and all(isinstance(a, str) for a in r["argv"])]


# ====================================================================== what a folder holds


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """A run folder (config.json; kind 'run') or an experiment folder (results.json)."""

    path: Path
    kind: str
    config: Any = None  # ml_collections.ConfigDict of a run
    steps: tuple[int, ...] = ()  # finished checkpoint steps

    @property
    def task(self) -> str:
        return "experiment" if self.kind == "experiment" else str(self.config["task"])

    @property
    def total_steps(self) -> int | None:
        return None if self.config is None else int(self.config["total_steps"])

    @property
    def step(self) -> int | None:
        return self.steps[-1] if self.steps else None

    @property
    def partial(self) -> bool:
        """No checkpoint at the configured last step: the run stopped (or is still running)."""
        return self.kind == "run" and (self.step is None or self.step < self.total_steps)


def checkpoint_steps(run_dir: str | Path | epath.Path) -> tuple[int, ...]:
    """Finished checkpoint steps (orbax renames a step's folder to its number when complete)."""
    folder = epath.Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return ()
    return tuple(sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()))


def inspect_run(run_dir: str | Path) -> RunInfo:
    """What `run_dir` holds, or a one-line error saying what is wrong and what was expected."""
    from seisfuse.train.config import RUN_CONFIG_FILE, read_run_config

    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder (expected a run folder of `seisfuse train/"
                                "finetune`, a `seisfuse demo --out` folder or an experiment folder)")
    if (path / RESULTS_FILE).is_file():
        return RunInfo(path, "experiment")
    if not (path / RUN_CONFIG_FILE).is_file():
        raise ValueError(f"{path} is not a seisfuse run: it has no {RUN_CONFIG_FILE} (expected the --workdir "
                         f"of `seisfuse train/finetune`, the --out of `seisfuse demo`) and no {RESULTS_FILE} "
                         "(an experiment folder)")
    config = read_run_config(path)
    if config.get("task") not in TASKS:
        raise ValueError(f"{path / RUN_CONFIG_FILE} names task {config.get('task')!r}; expected one of "
                         f"{', '.join(TASKS)}")
    info = RunInfo(path, "run", config, checkpoint_steps(path))
    if info.step is None and not _event_files(path) and not _metrics_files(path):
        raise ValueError(f"{path} has no checkpoints (expected {path / 'checkpoints'}/<step>/, written by "
                         "`seisfuse train/finetune/demo` every checkpoint_every steps) and no training "
                         "curves: nothing to report yet")
    return info


# ====================================================================== TensorBoard events


def _event_files(run_dir: Path) -> list[Path]:
    folder = run_dir / "tensorboard"
    return sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []


def read_scalars(run_dir: str | Path) -> tuple[dict[str, list[tuple[int, float]]], list[str]]:
    """({tag: [(step, value)] sorted by step}, notes) from the run's TensorBoard event files.

    The TFRecord framing is read here (length, masked CRC-32C of the length, payload, masked CRC
    of the payload) with the protobuf classes tensorboardX ships; a file that ends mid-record (a
    run killed while writing) or holds a damaged record keeps the records before it, with a note.
    A step logged twice (a resumed run repeats the steps after its checkpoint) keeps the later value.
    """
    from google.protobuf.message import DecodeError
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    scalars: dict[str, dict[int, float]] = {}
    notes: list[str] = []
    for file in _event_files(Path(run_dir)):
        data, pos = file.read_bytes(), 0
        while pos < len(data):
            header = data[pos:pos + 12]
            if len(header) < 12:
                notes.append(f"{file.name} ends inside a record at byte {pos} (the run stopped while "
                             "writing); the records before it are shown")
                break
            (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
            end = pos + 12 + length + 4
            if masked_crc32c(header[:8]) != length_crc:
                notes.append(f"{file.name}: damaged record at byte {pos}; the records before it are shown")
                break
            if end > len(data):
                notes.append(f"{file.name} ends inside a record at byte {pos} (the run stopped while "
                             "writing); the records before it are shown")
                break
            payload = data[pos + 12:pos + 12 + length]
            (payload_crc,) = struct.unpack("<I", data[end - 4:end])
            pos = end
            if masked_crc32c(payload) != payload_crc:
                notes.append(f"{file.name}: a record with a wrong checksum was skipped")
                continue
            try:
                event = Event.FromString(payload)
            except DecodeError:
                notes.append(f"{file.name}: an undecodable record was skipped")
                continue
            for value in event.summary.value:
                if value.HasField("simple_value") and math.isfinite(value.simple_value):
                    scalars.setdefault(value.tag, {})[int(event.step)] = float(value.simple_value)
    return {tag: sorted(points.items()) for tag, points in sorted(scalars.items())}, notes


# ====================================================================== metrics files


def _metrics_files(run_dir: Path) -> list[Path]:
    return [p for p in (run_dir / "metrics.json", run_dir / "eval" / "metrics.json") if p.is_file()]


def read_metrics(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """{file name relative to the run: its JSON object} for metrics.json (demo) and eval/metrics.json
    (`seisfuse evaluate`); an unreadable file is reported as such instead of its values."""
    out: dict[str, dict[str, Any]] = {}
    for path in _metrics_files(Path(run_dir)):
        name = str(path.relative_to(run_dir))
        try:
            value = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            out[name] = {"error": f"unreadable ({err})"}
            continue
        out[name] = value if isinstance(value, dict) else {"error": "not a JSON object"}
    return out


def flat_values(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dicts as {'a/b': value}; lists stay values (shown compactly)."""
    from seisfuse.train.config import flatten_tree

    return flatten_tree(tree, "/")


# ====================================================================== per-task collected data


def mae_examples(images: np.ndarray, pred: np.ndarray, mask: np.ndarray, patch_size: int,
                 norm_pix: bool) -> dict[str, np.ndarray]:
    """The four MAE panels and each example's loss (mean squared error over its masked patches,
    in the target space: per-patch normalised pixels when the model was trained with norm_pix_loss).

    images [N, H, W, C]; pred [N, L, p·p·C] (the decoder's output); mask [N, L], 1 = removed.
    Returns image, masked (removed patches NaN), reconstruction and target [N, H, W, C], loss [N].
    """
    from seisfuse.models.mae import patchify, unpatchify

    images = np.asarray(images, np.float32)
    pred, mask = np.asarray(pred, np.float32), np.asarray(mask, np.float32)
    channels = images.shape[-1]
    target = np.asarray(patchify(images, patch_size))
    if pred.shape != target.shape or mask.shape != target.shape[:2]:
        raise ValueError(f"pred {pred.shape} and mask {mask.shape} do not match the patches of images "
                         f"{images.shape} (expected {target.shape})")
    if norm_pix:  # what the loss compares the prediction with (MAE's unbiased per-patch variance)
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True, ddof=1)
        target = (target - mean) / np.sqrt(var + 1e-6)
    per_patch = np.mean((pred - target) ** 2, axis=-1)
    loss = np.sum(per_patch * mask, axis=1) / np.maximum(mask.sum(axis=1), 1)
    removed = np.asarray(unpatchify(np.repeat(mask[..., None], target.shape[-1], -1), patch_size, channels))
    return {"image": images, "masked": np.where(removed > 0, np.nan, images),
            "reconstruction": np.asarray(unpatchify(pred, patch_size, channels)),
            "target": np.asarray(unpatchify(target, patch_size, channels)), "loss": loss}


def segmentation_examples(images: np.ndarray, labels: np.ndarray, logits: np.ndarray,
                          num_classes: int) -> dict[str, Any]:
    """Per example: prediction, error map (pred != truth on labelled pixels), pixel cross-entropy,
    PA and mIoU; over the examples: the confusion matrix and SFM's metrics of it."""
    from seisfuse.eval import metrics as M

    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    pred = logits.argmax(-1)
    valid = (labels >= 0) & (labels < num_classes)
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, np.where(valid, labels, 0)[..., None].astype(np.int64), -1)[..., 0]
    loss, pa, miou = [], [], []
    for i in range(len(pred)):
        cm = M.confusion_matrix(pred[i], labels[i], num_classes)
        if cm.sum() == 0:
            loss.append(math.nan), pa.append(math.nan), miou.append(math.nan)
            continue
        values = M.segmentation_metrics_from_confusion(cm)
        loss.append(float(-picked[i][valid[i]].mean()))
        pa.append(values["PA"])
        miou.append(values["mIoU"])
    confusion = M.confusion_matrix(pred, labels, num_classes)
    overall = M.segmentation_metrics_from_confusion(confusion)
    return {"image": np.asarray(images), "label": labels, "pred": pred, "error": (pred != labels) & valid,
            "loss": np.asarray(loss), "PA": np.asarray(pa), "mIoU": np.asarray(miou),
            "confusion": confusion, "IoU": np.asarray(overall["IoU"]),
            "overall": {k: overall[k] for k in ("PA", "MPA", "mIoU", "FWIoU")}}


def regression_examples(images: np.ndarray, targets: np.ndarray, estimates: np.ndarray) -> dict[str, Any]:
    """Per example: error map (estimate - target) and SFM's regression figures (MSE, PSNR, SSIM,
    1 - MS-SSIM), each computed on that example alone."""
    from seisfuse.eval import metrics as M

    targets, estimates = np.asarray(targets, np.float32), np.asarray(estimates, np.float32)
    if targets.shape != estimates.shape:
        raise ValueError(f"targets {targets.shape} and estimates {estimates.shape} must match")
    per = [{k: float(v) for k, v in M.regression_metrics(estimates[i:i + 1], targets[i:i + 1]).items()}
           for i in range(len(targets))]
    out: dict[str, Any] = {"image": np.asarray(images), "target": targets, "estimate": estimates,
                           "error": estimates - targets}
    for key in ("MSE", "PSNR", "SSIM", "MSSSIM"):
        out[key] = np.asarray([p[key] for p in per])
    return out


def pick_examples(waveforms: np.ndarray, probs: np.ndarray, p_true: np.ndarray, s_true: np.ndarray,
                  sampling_rate: float) -> dict[str, np.ndarray]:
    """Per record: predicted P and S samples (the curves' maxima), residuals predicted - true in
    seconds (NaN without a true pick), each curve's peak probability and the worst |residual|."""
    from seisfuse.eval.metrics import predicted_picks

    probs = np.asarray(probs, np.float32)
    picked = predicted_picks(probs).astype(np.float64)
    truth = np.stack([np.asarray(p_true, np.float64), np.asarray(s_true, np.float64)], axis=1)
    residual = (picked - truth) / sampling_rate
    with np.errstate(invalid="ignore"):
        worst = np.where(np.isfinite(residual).any(1), np.nanmax(np.abs(np.nan_to_num(residual, nan=0.0)), 1),
                         np.nan)
    return {"waveform": np.asarray(waveforms), "probs": probs, "true": truth, "picked": picked,
            "residual": residual, "peak": probs[:, :, :2].max(axis=1), "worst": worst}


def classification_examples(waveforms: np.ndarray, logits: np.ndarray, labels: np.ndarray,
                            num_classes: int) -> dict[str, Any]:
    """Per record: predicted class, softmax probability of the true class, correct or not; over the
    records: accuracy, F1 and the confusion matrix."""
    from seisfuse.eval.metrics import classification_metrics

    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    probs = shifted / shifted.sum(-1, keepdims=True)
    pred = probs.argmax(-1)
    overall = classification_metrics(logits, labels, num_classes)
    return {"waveform": np.asarray(waveforms), "label": labels, "pred": pred,
            "p_true": probs[np.arange(len(labels)), labels], "correct": pred == labels,
            "confusion": np.asarray(overall["confusion_matrix"]),
            "overall": {"accuracy": overall["accuracy"], "macro_f1": overall["macro_f1"]}}


def alignment_data(embeddings: Mapping[str, np.ndarray], k: int = 4) -> dict[str, Any]:
    """Similarity sim[i, j] of waveform i and image j, each query's rank of its pair both ways, the
    top-k per waveform query, recall@K (trained and chance), and 2-D maps of the joint space: PCA
    and t-SNE (scikit-learn; skipped below 5 pairs, where it has no neighbourhoods to keep)."""
    from seisfuse.eval import metrics as M
    from seisfuse.eval.plots import pca_2d

    image, waveform = np.asarray(embeddings["image"]), np.asarray(embeddings["waveform"])
    sim = M.similarity(waveform, image)
    n = len(sim)
    both = np.concatenate([image, waveform])
    tsne = None
    if n >= 5:
        from sklearn.manifold import TSNE

        tsne = TSNE(n_components=2, perplexity=min(30.0, (2 * n - 1) / 3), init="pca",
                    random_state=0).fit_transform(both.astype(np.float64))
    return {"sim": sim, "wav2img_rank": M.pair_ranks(sim), "img2wav_rank": M.pair_ranks(sim.T),
            "top": np.argsort(-sim, axis=1, kind="stable")[:, :k],
            "recall": M.retrieval_metrics({"image": image, "waveform": waveform}, prefix="trained"),
            "pca": pca_2d(both), "tsne": tsne}


def read_results(folder: str | Path) -> list[dict[str, Any]]:
    """The records of an experiment folder's results.json: a list (or {"records": list}) of
    {task, arm, metric: str, seed: int, value: number or null}; anything else is refused, naming
    the first bad record."""
    path = Path(folder) / RESULTS_FILE
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    records = raw.get("records") if isinstance(raw, dict) else raw
    expected = "a list of {task, arm, seed, metric, value} records"
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path}: expected {expected}, got {type(records).__name__}")
    for i, r in enumerate(records):
        ok = (isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("task", "arm", "metric"))
              and isinstance(r.get("seed"), int) and not isinstance(r.get("seed"), bool)
              and (r.get("value") is None or (isinstance(r.get("value"), (int, float))
                                              and not isinstance(r.get("value"), bool))))
        if not ok:
            raise ValueError(f"{path}: record {i} ({str(r)[:120]}) is not a {{task, arm, seed, metric, "
                             "value}} record (strings, an integer seed, a number or null)")
    return records


def experiment_table(records: Sequence[Mapping[str, Any]], level: float = 0.95) -> list[dict[str, Any]]:
    """One row per (task, metric, arm): seeds, mean, standard deviation and the two-sided Student-t
    confidence interval of the mean over seeds (None with one seed); a null or non-finite value
    (a failed seed) is counted in `failed`, not averaged."""
    from scipy import stats

    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["metric"], r["arm"]), []).append(r)
    rows = []
    for (task, metric, arm), rs in sorted(groups.items()):
        values = np.asarray([r["value"] for r in rs if r["value"] is not None and math.isfinite(r["value"])])
        n = len(values)
        mean = float(values.mean()) if n else math.nan
        std = float(values.std(ddof=1)) if n > 1 else math.nan
        half = float(stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
        rows.append({"task": task, "metric": metric, "arm": arm, "seeds": n, "failed": len(rs) - n,
                     "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half})
    return rows


# ====================================================================== model outputs on held-out data


# The SFM task folder whose labels a run trained on the synthetic generator's learns (data.label_key).
def heldout_config(info: RunInfo, data: str | Path | None, overrides: Sequence[str], n: int) -> Any:
    """The run's config with its data section aimed at `n` held-out examples: `data` (checked
    against the run's modality first) replaces the source, `overrides` ('data.key=value') follow."""
    from seisfuse.eval.evaluate import aim_data

    config = aim_data(info.config.copy_and_resolve_references(), info.path, data, overrides)
    if config.data.source == "synthetic":
        config.data.eval_examples = n  # the first n held-out examples, whatever the run evaluated on
    return config


def heldout_batches(task: Any, config: Any, n: int) -> tuple[list[dict[str, np.ndarray]], str]:
    """Batches holding the first n held-out raw examples (the run's batch size, at most 32, so the
    model never sees more at once than in evaluation), and a note on where they come from."""
    from seisfuse.eval.evaluate import eval_batches

    data = config["data"]
    if data["source"] == "random":
        from seisfuse.train.loop import RandomBatches

        batch = next(iter(RandomBatches(task, n, int(config["seed"]) + 1)))
        return [batch], "the run trained on random arrays (data.source='random'): so are these examples"
    batches = [{k: np.asarray(v) for k, v in raw.items()} for raw in eval_batches(task, config, n)]
    if not batches:
        raise ValueError(f"the held-out data of the run ({data['source']}) hold no examples")
    where = data.get("path") or f"dataset seed {data.get('dataset_seed', 0)}"
    seen = min(n, sum(len(next(iter(b.values()))) for b in batches))
    return batches, f"{seen} held-out examples of the {data['source']} source ({where})"


def model_outputs(info: RunInfo, config: Any, n: int) -> dict[str, Any]:
    """The task's model on n held-out examples, restored from the newest intact checkpoint, batch by
    batch: {'batch': model inputs (and the raw examples' metadata), 'output' (or 'pred' and 'mask'
    for MAE, 'embeddings' for alignment), 'step', 'note', 'task'}."""
    import jax

    from seisfuse.train.checkpoint import restore_items
    from seisfuse.train.tasks import make_task

    task = make_task(config)
    raws, note = heldout_batches(task, config, n)
    seed = int(config["seed"])
    if info.task == "align":
        from seisfuse.eval.embed import Embedder, restore_params

        step, params = restore_params(task, info.path)
        raw = _concat(raws, n)
        batch = task.prepare(raw, [])
        embeddings = Embedder(task, params).embed_all(batch)
        return {"batch": {**raw, **batch}, "embeddings": embeddings, "step": step, "note": note, "task": task}
    if info.task == "mae":
        items, step = restore_items(info.path / "checkpoints", ("params",))
        apply = jax.jit(lambda p, x, z: task.model.apply({"params": p}, x, noise=z,
                                                         mask_ratio=task.mask_ratio)[1:])
        outputs = []
        for i, raw in enumerate(raws):
            images = _padded(np.asarray(raw["image"], np.float32), len(raws[0]["image"]))
            noise = np.random.default_rng([seed, 3, i]).random((len(images), task.cfg.num_patches))
            pred, mask = apply(items["params"], images, noise)
            count = len(raw["image"])
            outputs.append({"image": images[:count], "pred": np.asarray(pred)[:count],
                            "mask": np.asarray(mask)[:count]})
        out = _concat(outputs, n)
        return {"batch": {"image": out.pop("image")}, **out, "step": step, "note": note, "task": task}
    from seisfuse.eval.evaluate import restore_variables

    params, model_state, step = restore_variables(info.path)
    predict = jax.jit(task.predict)
    size = len(next(iter(raws[0].values())))
    batches, seen = [], 0
    for raw in raws:
        count = len(next(iter(raw.values())))
        batch = task.prepare(raw, [np.random.default_rng([seed, 2, seen + i]) for i in range(count)])
        batch = {k: np.asarray(v) for k, v in batch.items()}
        output = predict(params, model_state, {k: _padded(v, size) for k, v in batch.items()})
        batches.append({**batch, "output": np.asarray(output)[:count]})
        seen += count
    out = _concat(batches, n)
    output = out.pop("output")
    return {"batch": out, "output": output, "step": step, "note": note, "task": task}


def _concat(batches: Sequence[Mapping[str, np.ndarray]], n: int) -> dict[str, np.ndarray]:
    """The first n examples of the batches, as one."""
    return {k: np.concatenate([np.asarray(b[k]) for b in batches])[:n] for k in batches[0]}


def _padded(array: np.ndarray, size: int) -> np.ndarray:
    """A short last batch filled up with copies of its last example: one compiled shape."""
    return np.concatenate([array, np.repeat(array[-1:], size - len(array), axis=0)]) if len(array) < size \
        else array


# ====================================================================== figures


def _pyplot():
    from seisfuse.eval.plots import _pyplot as pyplot

    return pyplot()


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    plt.close(fig)
    return buffer.getvalue()


def _saved_png(draw: Callable[[Path], Any]) -> bytes:
    """Bytes of a seisfuse.eval.plots figure: `draw(path)` writes it to a temporary file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figure.png"
        draw(path)
        return path.read_bytes()


def _limit(a: np.ndarray) -> float:
    finite = np.abs(a[np.isfinite(a)])
    value = float(np.percentile(finite, 99)) if finite.size else 0.0
    return value if value > 0 else 1.0


def _strip(panels: Sequence[tuple[str, np.ndarray, Mapping[str, Any]]]) -> bytes:
    """One example as a row of image panels [(title, [H, W] or [H, W, 1] array, imshow options)];
    a 'sym' option sets a symmetric colour range at the panel's 99th percentile."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(1.9 * len(panels), 2.1), squeeze=False)
    for ax, (title, array, options) in zip(axes[0], panels, strict=True):
        array = np.asarray(array, np.float64)
        array = array[..., 0] if array.ndim == 3 else array
        options = dict(options)
        if options.pop("sym", False):
            limit = _limit(array)
            options.update(vmin=-limit, vmax=limit)
        cmap = plt.get_cmap(options.pop("cmap", "gray")).with_extremes(bad="0.75")
        ax.imshow(np.ma.masked_invalid(array), cmap=cmap, aspect="auto", interpolation="nearest", **options)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _png(fig)


def _confusion_png(confusion: np.ndarray) -> bytes:
    from seisfuse.eval import plots

    return _saved_png(lambda path: plots.confusion_matrix_plot(confusion, path))


def _class_style(num_classes: int) -> dict[str, Any]:
    from matplotlib.colors import BoundaryNorm

    plt = _pyplot()
    cmap = plt.get_cmap("tab20" if num_classes > 10 else "tab10").resampled(num_classes)
    return {"cmap": cmap, "norm": BoundaryNorm(np.arange(num_classes + 1) - 0.5, num_classes)}


def _waveform_png(waveform: np.ndarray, title: str, sampling_rate: float = 100.0) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 2.0))
    t = np.arange(len(waveform)) / sampling_rate
    scaled = waveform / (np.abs(waveform).max(axis=0) + 1e-12)
    for c, name in enumerate("ZNE"[:waveform.shape[1]]):
        ax.plot(t, scaled[:, c] - 2.2 * c, lw=0.5, color="k")
        ax.text(t[0], -2.2 * c + 0.6, name, fontsize=7)
    ax.set_yticks([])
    ax.set_xlabel("time (s)", fontsize=8)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _curves_png(scalars: Mapping[str, Sequence[tuple[int, float]]]) -> bytes:
    """One small panel per logged quantity against the step."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    tags = list(scalars)
    cols = min(3, len(tags))
    rows = math.ceil(len(tags) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 2.6 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags, strict=False):
        steps, values = zip(*scalars[tag], strict=True)
        ax.plot(steps, values, lw=1, marker="." if len(steps) < 30 else None)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        positive = all(v > 0 for v in values)
        if tag.startswith("loss") and positive and max(values) / min(values) > 30:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(tags):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def _map_png(points: np.ndarray, n: int, values: Mapping[str, np.ndarray], method: str) -> bytes:
    """A 2-D map of image (circles) and waveform (triangles) embeddings, pairs joined, coloured by
    each physical label in turn (points: images first, then waveforms)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(values), figsize=(5.0 * len(values), 4.2), squeeze=False)
    image, waveform = points[:n], points[n:]
    for ax, (label, colour) in zip(axes[0], values.items(), strict=True):
        ax.plot(np.stack([image[:, 0], waveform[:, 0]]), np.stack([image[:, 1], waveform[:, 1]]),
                color="0.85", lw=0.4, zorder=0)
        for name, xy, marker in (("image", image, "o"), ("waveform", waveform, "^")):
            shown = ax.scatter(xy[:, 0], xy[:, 1], c=colour, s=14, cmap="viridis", marker=marker, label=name,
                               edgecolors="none")
        fig.colorbar(shown, ax=ax, fraction=0.046, label=label)
        ax.legend(fontsize=8)
        ax.set_title(f"joint space ({method}), coloured by {label}", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _experiment_png(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Bars of the mean per arm with the confidence interval, one panel per (task, metric)."""
    plt = _pyplot()
    panels: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        panels.setdefault((r["task"], r["metric"]), []).append(r)
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, ((task, metric), group) in zip(axes.flat, panels.items(), strict=False):
        means = np.asarray([g["mean"] for g in group])
        err = np.asarray([[g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]] for g in group]).T
        ax.bar(range(len(group)), np.nan_to_num(means), yerr=np.nan_to_num(err), capsize=4,
               color=[f"C{i}" for i in range(len(group))])
        ax.set_xticks(range(len(group)), [g["arm"] for g in group], rotation=20, fontsize=8)
        ax.set_title(f"{task}: {metric} (95 % CI over seeds)", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


# ====================================================================== HTML pieces


@dataclasses.dataclass
class Section:
    """One part of the page: an id (anchor), a title, HTML fragments and the data behind them."""

    id: str
    title: str
    parts: list[str] = dataclasses.field(default_factory=list)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _p(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{_e(text)}</p>' if cls else f"<p>{_e(text)}</p>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _figure(png: bytes, caption: str) -> str:
    return f"<figure>{_img(png, caption)}<figcaption>{_e(caption)}</figcaption></figure>"


def _pre(text: str) -> str:
    return f"<pre>{_e(text)}</pre>"


def _cell(value: Any) -> str:
    """A table cell; numbers carry their value for sorting (NaN/None sort last), PNGs are images."""
    if isinstance(value, bytes):
        return f"<td>{_img(value, 'figure')}</td>"
    if isinstance(value, (bool, np.bool_)):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
        if not math.isfinite(number):
            return '<td data-v="NaN">–</td>'
        shown = f"{int(value)}" if isinstance(value, (int, np.integer)) else f"{number:.4g}"
        return f'<td data-v="{number!r}">{shown}</td>'
    if value is None:
        return '<td data-v="NaN">–</td>'
    if isinstance(value, (list, dict)):
        text = json.dumps(value, default=str)
        value = text if len(text) <= 160 else text[:157] + "..."
    return f"<td>{_e(value)}</td>"


def _table(table_id: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "",
           filter_box: bool = False) -> str:
    """A sortable table (click a header; again to reverse) with an optional filter box."""
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    parts = [f"<p class='caption'>{_e(caption)}</p>" if caption else ""]
    if filter_box:
        parts.append(f'<input class="filter" type="search" placeholder="filter rows" '
                     f'data-table="{table_id}">')
    parts.append(f'<table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead>'
                 f"<tbody>{body}</tbody></table>")
    return "".join(parts)


def _worst_first(values: np.ndarray, higher_is_worse: bool) -> np.ndarray:
    """Example order, worst first, NaN last."""
    values = np.asarray(values, np.float64)
    key = np.where(np.isnan(values), -np.inf if higher_is_worse else np.inf, values)
    return np.argsort(-key if higher_is_worse else key, kind="stable")


# ====================================================================== sections


def run_section(info: RunInfo) -> Section:
    section = Section("run", "Run")
    commands = read_commands(info.path)
    rows = [[c.get("time", ""), shlex.join(c["argv"]), c.get("cwd", "")] for c in commands]
    if rows:
        section.parts.append(_table("commands", ["time", "command", "working directory"], rows,
                                    "the commands that made the run (later rows: resumes)"))
    else:
        section.parts.append(_p(f"no {COMMAND_FILE}: made before seisfuse recorded commands, or from Python",
                                "note"))
    recorded = commands[0].get("versions", {}) if commands else {}
    now = software_versions()
    names = list(dict.fromkeys([*recorded, *now]))
    section.parts.append(_table("versions", ["software", "when the run was made", "this report"],
                                [[k, recorded.get(k, "–"), now.get(k, "–")] for k in names]))
    section.data.update(commands=commands, versions=now)
    if info.config is not None:
        config = info.config.to_dict()
        section.parts.append("<details open><summary>config.json</summary>"
                             f"{_pre(json.dumps(config, indent=2))}</details>")
        section.data["config"] = config
        history = info.path / "config_history.jsonl"
        if history.is_file():
            section.parts.append(f"<details><summary>config changes on resume</summary>"
                                 f"{_pre(history.read_text()[:20000])}</details>")
    return section


def metrics_section(info: RunInfo, computed: Mapping[str, Any]) -> Section:
    section = Section("metrics", "Metrics")
    files = read_metrics(info.path)
    rows = [[name, key, value] for name, values in files.items()
            for key, value in flat_values(values).items()]
    rows += [["this report", key, value] for key, value in flat_values(computed).items()]
    if not files:
        section.parts.append(_p("no metrics.json or eval/metrics.json in the run (`seisfuse evaluate RUN` "
                                "writes the latter for a fine-tuning run)", "note"))
    section.parts.append(_table("metrics-table", ["source", "metric", "value"], rows, filter_box=True))
    section.data["files"] = files
    return section


def curves_section(info: RunInfo) -> Section:
    section = Section("curves", "Training curves")
    scalars, notes = read_scalars(info.path)
    for note in notes:
        section.parts.append(_p(note, "note"))
    if not scalars:
        why = ("config.tensorboard was False" if not info.config.get("tensorboard", True)
               else "no events were written yet")
        section.parts.append(_p(f"no TensorBoard events in {info.path / 'tensorboard'} ({why})", "note"))
    else:
        section.parts.append(_figure(_curves_png(scalars),
                                     "logged every log_every steps (TensorBoard events)"))
        section.parts.append(_table("curves-table", ["quantity", "first step", "last step", "last value"],
                                    [[t, p[0][0], p[-1][0], p[-1][1]] for t, p in scalars.items()]))
    section.data["scalars"] = scalars
    return section


def mae_section(out: Mapping[str, Any], n_shown: int) -> tuple[Section, dict[str, float]]:
    task = out["task"]
    data = mae_examples(out["batch"]["image"], out["pred"], out["mask"], task.cfg.patch_size,
                        task.cfg.norm_pix_loss)
    section = Section("mae", "Masked reconstruction")
    section.parts.append(_p(f"{out['note']}; mask ratio {task.mask_ratio}; grey = removed patches; loss = "
                            "mean squared error over the removed patches"
                            + (" (per-patch normalised target)" if task.cfg.norm_pix_loss else "")))
    rows = []
    for i in _worst_first(data["loss"], higher_is_worse=True)[:n_shown]:
        panels = [(name, data[key][i], {"sym": True}) for name, key in
                  (("input", "image"), ("masked input", "masked"), ("reconstruction", "reconstruction"),
                   ("target", "target"))]
        rows.append([int(i), float(data["loss"][i]), _strip(panels)])
    section.parts.append(_table("mae-examples", ["example", "loss",
                                                 "input / masked input / reconstruction / target"],
                                rows, "worst first; click a header to sort"))
    section.data["loss"] = data["loss"]
    return section, {"mae/masked_mse": float(np.mean(data["loss"]))}


def segmentation_section(out: Mapping[str, Any], n_shown: int) -> tuple[Section, dict[str, float]]:
    classes = out["task"].num_classes
    data = segmentation_examples(out["batch"]["image"], out["batch"]["label"], out["output"], classes)
    style = _class_style(classes)
    section = Section("segmentation", "Segmentation")
    section.parts.append(_p(f"{out['note']}; error = wrongly classified pixels"))
    rows = []
    for i in _worst_first(data["mIoU"], higher_is_worse=False)[:n_shown]:
        panels = [("image", data["image"][i], {"sym": True}), ("truth", data["label"][i], style),
                  ("prediction", data["pred"][i], style),
                  ("error", data["error"][i], {"cmap": "Reds", "vmin": 0, "vmax": 1})]
        rows.append([int(i), *(float(data[k][i]) for k in ("mIoU", "PA", "loss")), _strip(panels)])
    section.parts.append(_table("segmentation-examples", ["example", "mIoU", "PA", "loss",
                                                          "image / truth / prediction / error"], rows,
                                "worst mIoU first; click a header to sort"))
    from seisfuse.eval import plots

    section.parts.append(_figure(_saved_png(lambda path: plots.iou_bars(data["IoU"], path)),
                                 "per-class IoU over these examples"))
    section.parts.append(_figure(_confusion_png(data["confusion"]),
                                 "confusion matrix over these examples (rows: truth)"))
    section.data.update({k: data[k] for k in ("mIoU", "PA", "loss", "IoU", "confusion", "overall")})
    return section, {f"segmentation/{k}": v for k, v in data["overall"].items()}


def regression_section(out: Mapping[str, Any], n_shown: int) -> tuple[Section, dict[str, float]]:
    task, batch = out["task"], out["batch"]
    estimates = np.asarray(task.estimate(out["output"], batch))
    shown = batch["image"] * batch["trace_mask"] if "trace_mask" in batch else batch["image"]
    data = regression_examples(shown, batch["target"], estimates)
    section = Section("regression", "Regression")
    section.parts.append(_p(f"{out['note']}; error = prediction - target; metrics per example as SFM's "
                            "evaluateRegression computes them (MSSSIM column: 1 - MS-SSIM)"))
    rows = []
    for i in _worst_first(data["PSNR"], higher_is_worse=False)[:n_shown]:
        limit = _limit(data["target"][i])
        panels = [("input", data["image"][i], {"sym": True}),
                  ("target", data["target"][i], {"vmin": -limit, "vmax": limit}),
                  ("prediction", data["estimate"][i], {"vmin": -limit, "vmax": limit}),
                  ("error", data["error"][i], {"sym": True, "cmap": "seismic"})]
        rows.append([int(i), *(float(data[k][i]) for k in ("PSNR", "SSIM", "MSE", "MSSSIM")), _strip(panels)])
    section.parts.append(_table("regression-examples", ["example", "PSNR", "SSIM", "MSE", "MSSSIM",
                                                        "input / target / prediction / error"], rows,
                                "worst PSNR first; click a header to sort"))
    section.data.update({k: data[k] for k in ("PSNR", "SSIM", "MSE", "MSSSIM")})
    return section, {f"regression/mean_{k}": float(np.mean(data[k])) for k in ("PSNR", "SSIM", "MSE")}


def pick_section(out: Mapping[str, Any], n_shown: int) -> tuple[Section, dict[str, float]]:
    from seisfuse.data.transforms import SAMPLING_RATE
    from seisfuse.eval import plots

    batch = out["batch"]
    count = len(out["output"])
    p = batch.get("p_sample", np.full(count, np.nan))
    s = batch.get("s_sample", np.full(count, np.nan))
    data = pick_examples(batch["waveform"], out["output"], p, s, SAMPLING_RATE)
    section = Section("picking", "Phase picking")
    section.parts.append(_p(f"{out['note']}; predicted pick = the curve's maximum over the window; "
                            "residual = predicted - true (s)"))
    rows = []
    for i in _worst_first(data["worst"], higher_is_worse=True)[:n_shown]:
        truth = {"P": data["true"][i, 0], "S": data["true"][i, 1]}
        picked = {"P": data["picked"][i, 0], "S": data["picked"][i, 1]}
        figure = _saved_png(lambda path, i=i, truth=truth, picked=picked: plots.pick_plot(
            data["waveform"][i], data["probs"][i], truth, picked, path, SAMPLING_RATE))
        rows.append([int(i), float(data["residual"][i, 0]), float(data["residual"][i, 1]),
                     float(data["peak"][i, 0]), float(data["peak"][i, 1]), figure])
    section.parts.append(_table("picking-examples", ["record", "P residual (s)", "S residual (s)", "P peak",
                                                     "S peak", "record and P / S / noise curves"], rows,
                                "worst |residual| first; click a header to sort"))
    residuals = {phase: data["residual"][:, j] for j, phase in enumerate("PS")}
    section.parts.append(_figure(_saved_png(lambda path: plots.residual_histograms(residuals, path)),
                                 "onset residuals of these records"))
    section.data.update({k: data[k] for k in ("residual", "picked", "true", "peak")})
    summary = {}
    for j, phase in enumerate("PS"):
        r = data["residual"][:, j]
        if np.isfinite(r).any():
            summary[f"picking/{phase}_mae_s"] = float(np.nanmean(np.abs(r)))
    return section, summary


def classification_section(out: Mapping[str, Any], n_shown: int) -> tuple[Section, dict[str, float]]:
    batch = out["batch"]
    data = classification_examples(batch["waveform"], out["output"], batch["label"], out["task"].num_classes)
    section = Section("classification", "Event classification")
    section.parts.append(_p(f"{out['note']}; p(true) = the model's probability of the true class"))
    rows = []
    for i in _worst_first(data["p_true"], higher_is_worse=False)[:n_shown]:
        title = f"record {i}: true class {data['label'][i]}, predicted {data['pred'][i]}"
        rows.append([int(i), int(data["label"][i]), int(data["pred"][i]), float(data["p_true"][i]),
                     bool(data["correct"][i]), _waveform_png(data["waveform"][i], title)])
    section.parts.append(_table("classification-examples",
                                ["record", "true", "predicted", "p(true)", "correct", "record"], rows,
                                "least confident in the true class first; filter 'no' for the mistakes",
                                filter_box=True))
    section.parts.append(_figure(_confusion_png(data["confusion"]),
                                 "confusion matrix over these records (rows: truth)"))
    section.data.update({k: data[k] for k in ("label", "pred", "p_true", "confusion", "overall")})
    return section, {f"classification/{k}": v for k, v in data["overall"].items()}


def alignment_section(out: Mapping[str, Any], n_shown: int, k: int = 4) -> tuple[Section, dict[str, float]]:
    from seisfuse.eval import plots

    embeddings, batch = out["embeddings"], out["batch"]
    n = len(embeddings["image"])
    k = min(k, n)
    data = alignment_data(embeddings, k)
    section = Section("alignment", "Image-waveform alignment")
    section.parts.append(_p(f"{out['note']}; similarity = cosine of the joint-space embeddings; rank 1 = "
                            f"the query's own pair came first among {n}"))
    recall = data["recall"]
    columns = ["R@1", "R@5", "R@10", "mean_rank", "median_rank"]
    rows = [[f"trained {d}", *(recall[f"trained/{d}/{c}"] for c in columns)] for d in ("img2wav", "wav2img")]
    rows.append(["chance", *(recall[f"chance/{c}"] for c in columns)])
    section.parts.append(_table("recall", ["", *columns], rows, f"recall@K among these {n} held-out pairs"))
    images, waveforms = np.asarray(batch["image"], np.float32), np.asarray(batch["waveform"], np.float32)
    rows = []
    for q in _worst_first(data["wav2img_rank"], higher_is_worse=True)[:n_shown]:
        grid = _saved_png(lambda path, q=q: plots.retrieval_grid(path, waveforms, images, data["sim"],
                                                                 queries=[int(q)], k=k))
        rows.append([int(q), int(data["wav2img_rank"][q]), int(data["img2wav_rank"][q]),
                     float(data["sim"][q, q]), grid])
    columns = ["pair", "rank of its image", "rank of its waveform", "pair similarity",
               f"waveform query and its top {k} images"]
    section.parts.append(_table("alignment-queries", columns, rows,
                                "worst-ranked first; the true pair is framed green"))
    section.parts.append(_figure(_saved_png(lambda path: plots.similarity_matrix(
        path, embeddings["image"], embeddings["waveform"], title=f"cosine similarity, {n} held-out pairs")),
        "similarity matrix (a trained model shows a bright diagonal)"))
    labels = _pair_labels(batch, n)
    section.parts.append(_figure(_saved_png(lambda path: plots.joint_space_map(
        path, {"image": embeddings["image"], "waveform": embeddings["waveform"]}, labels)),
        "joint space by PCA (linear): pairs joined by grey lines"))
    if data["tsne"] is not None:
        section.parts.append(_figure(_map_png(data["tsne"], n, labels, "t-SNE"),
                                     "joint space by t-SNE (non-linear, scikit-learn): neighbourhoods, not "
                                     "distances, are meaningful"))
    else:
        section.parts.append(_p("t-SNE needs at least 5 pairs: pass a larger --n", "note"))
    section.data.update({k: data[k] for k in ("sim", "wav2img_rank", "img2wav_rank", "top", "recall", "pca",
                                              "tsne")})
    return section, {k: v for k, v in recall.items() if k.startswith("trained/")}


def _pair_labels(batch: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Physical quantities to colour the joint-space maps by, where the data carry them."""
    labels = {}
    if "p_sample" in batch and "s_sample" in batch:
        labels["S-P time (s)"] = (np.asarray(batch["s_sample"], np.float64)
                                  - np.asarray(batch["p_sample"], np.float64)) / 100.0
    if "magnitude" in batch:
        labels["magnitude"] = np.asarray(batch["magnitude"], np.float64)
    return labels or {"pair": np.arange(n, dtype=np.float64)}


def experiment_section(info: RunInfo) -> Section:
    records = read_results(info.path)
    rows = experiment_table(records)
    section = Section("experiment", "Experiment results")
    section.parts.append(_p(f"{len(records)} runs ({RESULTS_FILE}); mean over seeds with its 95 % Student-t "
                            "confidence interval; 'failed' counts seeds without a finite value"))
    columns = ["task", "metric", "arm", "seeds", "failed", "mean", "std", "ci_low", "ci_high"]
    section.parts.append(_table("experiment-table", columns, [[r[c] for c in columns] for r in rows],
                                filter_box=True))
    section.parts.append(_figure(_experiment_png(rows), "mean per arm with its 95 % confidence interval"))
    summary = info.path / SUMMARY_FILE
    if summary.is_file():
        section.parts.append(f"<details open><summary>{SUMMARY_FILE}</summary>"
                             f"{_pre(summary.read_text(errors='replace')[:100_000])}</details>")
    section.data["rows"] = rows
    return section


MODEL_SECTIONS = {"mae": mae_section, "segment": segmentation_section, "regress": regression_section,
                  "pick": pick_section, "classify": classification_section, "align": alignment_section}


# ====================================================================== the page


@dataclasses.dataclass
class Report:
    title: str
    summary: list[str]
    sections: list[Section]


def build_report(run_dir: str | Path, *, data: str | Path | None = None, overrides: Sequence[str] = (),
                 n: int = 16) -> Report:
    """The sections of `run_dir`'s report; the model runs on `n` held-out examples (from the run's
    own held-out split, or `data`, checked against the run's modality)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_EXAMPLES:
        raise ValueError(f"--n must be an integer in [1, {MAX_EXAMPLES}], got {n!r}")
    info = inspect_run(run_dir)
    title = f"seisfuse report: {info.path.resolve().name}"
    if info.kind == "experiment":
        if data is not None:
            raise ValueError(f"{info.path} is an experiment folder (a table of results): --data does not "
                             "apply")
        return Report(title, [f"experiment folder {info.path}"],
                      [experiment_section(info), run_section(info)])
    summary = [f"run {info.path} · task {info.task}"]
    sections: list[Section] = []
    computed: dict[str, float] = {}
    if info.step is None:
        if data is not None:
            raise ValueError(f"{info.path} has no checkpoint yet: --data needs one to run the model on")
        summary.append(f"no checkpoint yet (of {info.total_steps} steps): the model's sections appear once "
                       "the run has saved one; what the run wrote so far follows")
    elif info.task == "seislm":
        summary.append(f"checkpoint at step {info.step} of {info.total_steps}: SeisLM pretraining has no "
                       "task output to show; its curves and metrics follow")
    else:
        out = model_outputs(info, heldout_config(info, data, overrides, n), n)
        section, computed = MODEL_SECTIONS[info.task](out, n)
        sections.append(section)
        summary.append(f"model restored from the checkpoint at step {out['step']} of {info.total_steps}")
    if info.partial and info.step is not None:
        summary.append(f"partial run: the newest checkpoint is at step {info.step} of {info.total_steps} "
                       "(the run stopped early or is still training); this report shows what exists")
    curves = curves_section(info)
    if info.task == "mae" and "loss" in curves.data["scalars"] and sections:
        sections[0].parts.append(_figure(_curves_png({"loss": curves.data["scalars"]["loss"]}),
                                         "training loss (masked-patch MSE)"))
    sections += [metrics_section(info, computed), curves, run_section(info)]
    return Report(title, summary, sections)


STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1500px;padding:0 16px 40px;color:#222}
header{border-bottom:1px solid #ccc;margin-bottom:8px}
nav a{margin-right:14px}
section{border-top:1px solid #ddd;padding-top:4px;margin-top:18px}
table{border-collapse:collapse;margin:6px 0 12px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:middle}
th{background:#f3f3f3;cursor:pointer;user-select:none}
th[data-order=asc]::after{content:" \\25B2"}
th[data-order=desc]::after{content:" \\25BC"}
td[data-v]{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;display:block}
figure{margin:8px 0 14px}
figcaption,.caption{color:#555;font-size:13px}
.note{color:#8a4b00}
pre{background:#f6f6f6;padding:8px;max-height:420px;overflow:auto;font-size:12px}
input.filter{margin:4px 0;padding:3px 6px;width:260px}
"""

SCRIPT = """
(function () {
  function key(row, col) {
    var cell = row.cells[col];
    if (cell.dataset.v !== undefined) { return parseFloat(cell.dataset.v); }
    return cell.textContent.trim();
  }
  function compare(a, b, descending) {
    var numbers = typeof a === "number" && typeof b === "number";
    if (numbers && isNaN(a) !== isNaN(b)) { return isNaN(a) ? 1 : -1; }
    var order = numbers ? (isNaN(a) ? 0 : a - b) : String(a).localeCompare(String(b));
    return descending ? -order : order;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var headers = table.querySelectorAll("thead th");
    headers.forEach(function (th, col) {
      th.addEventListener("click", function () {
        var descending = th.dataset.order === "asc";
        headers.forEach(function (h) { delete h.dataset.order; });
        th.dataset.order = descending ? "desc" : "asc";
        var body = table.tBodies[0];
        Array.from(body.rows)
          .sort(function (a, b) { return compare(key(a, col), key(b, col), descending); })
          .forEach(function (row) { body.appendChild(row); });
      });
    });
  });
  document.querySelectorAll("input.filter").forEach(function (input) {
    var table = document.getElementById(input.dataset.table);
    input.addEventListener("input", function () {
      var words = input.value.toLowerCase().split(/\\s+/).filter(Boolean);
      Array.from(table.tBodies[0].rows).forEach(function (row) {
        var text = row.textContent.toLowerCase();
        row.hidden = !words.every(function (w) { return text.indexOf(w) >= 0; });
      });
    });
  });
  var button = document.getElementById("save-data");
  button.addEventListener("click", function () {
    var text = document.getElementById("report-data").textContent;
    var link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([text], {type: "application/json"}));
    link.download = "report-data.json";
    link.click();
  });
})();
"""


def render_html(report: Report) -> str:
    """The whole page: inline CSS, sections, the data as JSON, the sorting/filtering script."""
    from seisfuse.eval.metrics import to_jsonable

    nav = "".join(f'<a href="#{s.id}">{_e(s.title)}</a>' for s in report.sections)
    body = "".join(f'<section class="report-section" id="{s.id}"><h2>{_e(s.title)}</h2>{"".join(s.parts)}'
                   "</section>" for s in report.sections)
    payload = {"title": report.title, "summary": report.summary,
               "sections": {s.id: to_jsonable(s.data) for s in report.sections}}
    # "<" escaped: no string from a config or a results file can close the script element.
    data = json.dumps(payload).replace("<", "\\u003c")
    written = time.strftime("%Y-%m-%d %H:%M:%S")
    summary = "".join(_p(line) for line in report.summary)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(report.title)}</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{STYLE}</style></head>"
            f"<body><header><h1>{_e(report.title)}</h1>{summary}<p class='caption'>written {written} by "
            f"seisfuse view; <button id='save-data' type='button'>save the numbers (JSON)</button></p>"
            f"<nav>{nav}</nav></header>{body}"
            f'<script type="application/json" id="report-data">{data}</script><script>{SCRIPT}</script>'
            "</body></html>\n")


def view_run(run_dir: str | Path, *, data: str | Path | None = None, overrides: Sequence[str] = (),
             out: str | Path | None = None, n: int = 16) -> Path:
    """Write the report of `run_dir` to `out` (default RUN/report.html); returns its path.
    Only .html files are written, so a mistyped --out cannot replace a run's own files."""
    out = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out {out}: the report is an HTML page; give a path ending in .html")
    text = render_html(build_report(run_dir, data=data, overrides=overrides, n=n))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
