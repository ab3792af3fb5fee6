"""One generic sharded training loop for every task.

The step is `jax.jit` with explicit in/out shardings and a donated state; it never syncs with the
host. Parameters are sharded by their logical axis names (seisfuse.parallel), optimizer state
follows them, batches shard over (data, fsdp) and each process feeds its own slice. Non-finite
loss or gradients leave the state untouched inside the step; the host reads that flag one step
late (so dispatch never waits) and either stops with an error naming the step or counts a skip.

Tasks with non-trainable model state (BatchNorm statistics of the fine-tuning heads) implement
`init_model_state` and `stateful_loss`; that state rides in `TrainState.model_state` (replicated),
is updated by every step and saved with the checkpoints. Other tasks carry an empty dict.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from seisfuse.parallel import (
    batch_sharding,
    follow_params,
    local_batch_size,
    make_mesh,
    param_shardings,
    process_batch_offset,
    replicated,
    to_global,
)
from seisfuse.train.checkpoint import Checkpointer, abstract_with_shardings, probe_writable
from seisfuse.train.config import resume_changes, save_run_config
from seisfuse.train.logging import MetricLogger
from seisfuse.train.optim import optimizer_from_config
from seisfuse.train.tasks import Task


class NonFiniteError(FloatingPointError):
    """Loss or gradients became NaN/Inf."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any  # non-trainable collections (e.g. {"batch_stats": ...}); {} for most tasks


def is_stateful(task: Task) -> bool:
    """Whether the task carries non-trainable model state (BatchNorm statistics)."""
    return hasattr(task, "init_model_state")


DATA_STREAM, MASK_STREAM = 0, 1


def example_rngs(seed: int, stream: int, step: int, first: int, count: int) -> list[np.random.Generator]:
    """One Generator per example, keyed by its global index: the same draws however the global
    batch is split over processes, and on resume."""
    return [np.random.default_rng([seed, stream, step, first + i]) for i in range(count)]


class RandomBatches:
    """Deterministic random raw batches (smoke tests, benchmarks); its state is the batch count."""

    def __init__(self, task: Task, batch_size: int, seed: int, first_example: int = 0):
        self.task, self.batch_size, self.seed, self.first = task, batch_size, seed, first_example
        self.count = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rngs = example_rngs(self.seed, DATA_STREAM, self.count, self.first, self.batch_size)
        self.count += 1
        examples = [self.task.random_example(rng) for rng in rngs]
        return {key: np.stack([e[key] for e in examples]) for key in examples[0]}

    def get_state(self) -> dict[str, Any]:
        return {"count": self.count}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.count = int(state["count"])


class Trainer:
    """Builds mesh, shardings, optimizer and the jitted step for a task and an experiment config."""

    def __init__(self, task: Task, config: Mapping[str, Any]):
        self.task, self.config = task, config
        self.mesh = make_mesh(**config["mesh"])
        self.local_batch = local_batch_size(config["batch_size"], self.mesh)
        self.first_example = process_batch_offset(config["batch_size"], self.mesh)
        self.accumulate = int(config["optimizer"]["accumulate"])
        if self.local_batch % self.accumulate:
            raise ValueError(f"per-process batch {self.local_batch} is not divisible by "
                             f"accumulate={self.accumulate}")
        key = jax.random.key(config["seed"])
        boxed = jax.eval_shape(task.init_params, key)
        shardings = param_shardings(boxed, self.mesh)
        abstract_params = nn.unbox(boxed)
        opt = config["optimizer"]
        scales = (task.layer_scales(abstract_params, opt["layer_decay"])
                  if opt["layer_decay"] != 1.0 else None)
        labels = task.param_labels(abstract_params)
        self.tx = optimizer_from_config(opt, labels, config["total_steps"], scales)
        abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
        opt_shardings = follow_params(abstract_opt, abstract_params, shardings, self.mesh)
        abstract_model_state = jax.eval_shape(self._init_model_state, key)
        self.state_shardings = TrainState(
            step=replicated(self.mesh), params=shardings, opt_state=opt_shardings,
            model_state=jax.tree.map(lambda _: replicated(self.mesh), abstract_model_state))
        abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                              opt_state=abstract_opt, model_state=abstract_model_state)
        self.abstract_state = abstract_with_shardings(abstract, self.state_shardings)
        self.init_state = jax.jit(self._init, out_shardings=self.state_shardings)
        self.step = jax.jit(self._step, donate_argnums=0,
                            in_shardings=(self.state_shardings, batch_sharding(self.mesh)),
                            out_shardings=(self.state_shardings, replicated(self.mesh)))

    def _init_model_state(self, key: jax.Array) -> Any:
        return self.task.init_model_state(key) if is_stateful(self.task) else {}

    def _init(self, key: jax.Array) -> TrainState:
        params = nn.unbox(self.task.init_params(key))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
                          model_state=self._init_model_state(key))

    def _loss(self, params: Any, model_state: Any, batch: Mapping[str, jax.Array], key: jax.Array,
              step: jax.Array) -> tuple[jax.Array, tuple[dict, Any]]:
        """(loss, (metrics, new model state)) for stateful and stateless tasks alike."""
        if is_stateful(self.task):
            return self.task.stateful_loss(params, model_state, batch, key, step)
        loss, metrics = self.task.loss(params, batch, key, step)
        return loss, (metrics, model_state)

    def _grads(self, params: Any, model_state: Any, batch: Mapping[str, jax.Array], key: jax.Array,
               step: jax.Array) -> tuple[jax.Array, dict, Any, Any]:
        grad_fn = jax.value_and_grad(self._loss, has_aux=True)
        if self.accumulate == 1:
            (loss, (metrics, model_state)), grads = grad_fn(params, model_state, batch, key, step)
            return loss, metrics, grads, model_state
        k = self.accumulate
        # Example j goes to micro-batch j % k: the batch axis keeps its sharding.
        micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch)

        def body(carry: Any, inputs: Any) -> tuple[Any, None]:
            total, current = carry  # model state (BatchNorm statistics) updates micro-batch by micro-batch
            mb, index = inputs
            (loss, (metrics, current)), grads = grad_fn(params, current, mb, jax.random.fold_in(key, index),
                                                        step)
            return (jax.tree.map(jnp.add, total, (loss, metrics, grads)), current), None

        shapes = jax.eval_shape(grad_fn, params, model_state, jax.tree.map(lambda x: x[0], micro), key, step)
        (loss_shape, (metrics_shape, _)), grads_shape = shapes
        zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (loss_shape, metrics_shape, grads_shape))
        (total, model_state), _ = jax.lax.scan(body, (zero, model_state), (micro, jnp.arange(k)))
        loss, metrics, grads = jax.tree.map(lambda x: x / k, total)
        return loss, metrics, grads, model_state

    def _step(self, state: TrainState,
              batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        step_key = jax.random.fold_in(jax.random.key(self.config["seed"]), state.step)
        loss, metrics, grads, model_state = self._grads(state.params, state.model_state, batch, step_key,
                                                        state.step)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                               opt_state=keep(opt_state, state.opt_state),
                               model_state=keep(model_state, state.model_state))
        return new_state, {**metrics, "loss": loss, "grad_norm": grad_norm, "finite": finite}

    def global_batch(self, raw: Mapping[str, np.ndarray], step: int) -> dict[str, jax.Array]:
        """Host-side masks (one Generator per global example index), then global arrays."""
        rngs = example_rngs(self.config["seed"], MASK_STREAM, step, self.first_example, self.local_batch)
        return to_global(self.task.prepare(raw, rngs), self.mesh)


def make_data(task: Task, config: Mapping[str, Any], trainer: Trainer) -> Any:
    """The host-local raw-batch iterator the config names: 'random' arrays, or a grain pipeline over
    the source `config.data` describes (seisfuse.data.sources; sharded by process, state saved
    with checkpoints)."""
    if config["data"]["source"] == "random":
        return RandomBatches(task, trainer.local_batch, config["seed"], trainer.first_example)
    from seisfuse.data.sources import make_source

    return iter(config_pipeline(make_source(config["data"]), task.data_task, config, trainer.local_batch))


def config_pipeline(source: Any, data_task: str, config: Mapping[str, Any], batch_size: int,
                    **overrides: Any) -> Any:
    """The grain pipeline over `source` that config.data asks for (workers, P window, augmentation,
    label): one reading of those keys for the engine, evaluation and the demo's in-memory pairs.
    `overrides` replace make_dataset arguments (evaluation: one ordered pass, no augmentation)."""
    from seisfuse.data.pipeline import make_dataset

    data = config["data"]
    options = dict(batch_size=batch_size, seed=config["seed"], num_workers=data["num_workers"],
                   p_window=data["p_window"], augment=bool(data["augment"]), label_key=data["label_key"])
    return make_dataset(source, task=data_task, **{**options, **overrides})


def train(task: Task, config: Mapping[str, Any], workdir: str | Path, *, resume: bool = False,
          data: Any = None) -> TrainState:
    """Run (or resume) training to `config.total_steps`; returns the final state.

    `data` is an iterator of host-local raw batches with get_state()/set_state(); by default the
    one `config.data` names. SIGTERM saves a checkpoint at the next step boundary and returns.
    """
    stop = {"requested": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    try:
        return _run(task, config, epath.Path(workdir), resume, data, stop)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(task: Task, config: Mapping[str, Any], workdir: epath.Path, resume: bool, data: Any,
         stop: dict[str, bool]) -> TrainState:
    # Validate everything (writable folder, config, task, data, checkpoints) before writing anything.
    probe_writable(workdir)
    trainer = Trainer(task, config)
    data = data if data is not None else make_data(task, config, trainer)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config["keep_checkpoints"])
    latest = checkpointer.latest_step()
    if latest is not None and not resume:
        checkpointer.close()
        raise FileExistsError(f"{workdir} already holds checkpoints: pass resume=True (--resume) "
                              "or use a new workdir")
    if resume and latest is None:
        print(f"no checkpoint in {workdir}; starting fresh", flush=True)
    if latest is not None:
        changes = resume_changes(workdir, config)
        # The newest intact step; damaged ones are skipped with a warning naming them.
        _, state, data_state = checkpointer.restore_latest(trainer.abstract_state)
        data.set_state(data_state)
    else:
        changes = None
        state = trainer.init_state(jax.random.key(config["seed"]))
    if jax.process_index() == 0 and (latest is None or changes):
        save_run_config(workdir, config, changes=changes)

    total = int(config["total_steps"])
    logger = MetricLogger(workdir, total_steps=total, global_batch=config["batch_size"],
                          flops_per_step=task.flops_per_example() * config["batch_size"],
                          dtype=config["model"]["dtype"], wandb_config=config["wandb"],
                          tensorboard=config["tensorboard"], run_config=config)
    step = int(jax.device_get(state.step))
    pending: tuple[int, dict] | None = None
    skipped = 0
    try:
        logger.start(step)
        while step < total and not stop["requested"]:
            batch = trainer.global_batch(next(data), step)
            state, metrics = trainer.step(state, batch)
            skipped += _check_finite(pending, config["on_nonfinite"])
            pending = (step, metrics)
            step += 1
            if step % config["log_every"] == 0 or step == total:
                logger.log(step, {k: float(v) for k, v in jax.device_get(metrics).items() if k != "finite"})
            if step % config["checkpoint_every"] == 0 or step == total or stop["requested"]:
                skipped += _check_finite(pending, config["on_nonfinite"])
                pending = None
                checkpointer.save(step, state, data.get_state())
        skipped += _check_finite(pending, config["on_nonfinite"])
    finally:
        checkpointer.close()
        logger.close()
    if skipped:
        print(f"skipped {skipped} updates with non-finite loss or gradients", flush=True)
    return state


def _check_finite(pending: tuple[int, dict] | None, policy: str) -> int:
    """1 if the pending step's update was skipped as non-finite (raises under policy 'stop')."""
    if pending is None or bool(jax.device_get(pending[1]["finite"])):
        return 0
    if policy == "stop":
        raise NonFiniteError(f"loss or gradients are NaN/Inf at step {pending[0]} (loss = "
                             f"{float(jax.device_get(pending[1]['loss']))}); the update was not applied. "
                             "Set on_nonfinite='skip' to skip such updates instead.")
    return 1
