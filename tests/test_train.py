"""The sharded training engine: mesh equivalence, multi-process, memory, resume, non-finite handling."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax.traverse_util import flatten_dict

from seisfuse.eval.embed import load_run_config
from seisfuse.train.config import load_config
from seisfuse.train.loop import NonFiniteError, RandomBatches, train
from seisfuse.train.optim import cosine_anneal, mae_layer_scales
from seisfuse.train.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


def _worker(out: Path, *args: str, devices: int = 1, env: dict | None = None) -> subprocess.Popen:
    environment = {**os.environ, **(env or {}),
                   "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen([sys.executable, "-m", "tests.train_worker", str(out), *args], cwd=ROOT,
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One-device reference runs, 8-fake-device runs on two meshes, and a 2-process run, in parallel."""
    out = tmp_path_factory.mktemp("runs")
    single = _worker(out / "one", "mae:1,1,1", "seislm:1,1,1", "mae:1,1,1:2")
    eight = _worker(out / "eight", "mae:2,2,2", "mae:1,8,1", "seislm:2,2,2", "seislm:1,8,1",
                    "--save-to", str(out / "ck8"), "--restore-to-mesh", "2,2,2", "--memory", devices=8)
    port = 20000 + os.getpid() % 20000
    pair = [_worker(out / "two", "mae:2,1,1", "seislm:1,2,1", "--save-to", str(out / "ck2"),
                    "--restore-to-mesh", "2,1,1",
                    env={"SEISFUSE_COORDINATOR": f"127.0.0.1:{port}", "SEISFUSE_NUM_PROCESSES": "2",
                         "SEISFUSE_PROCESS_ID": str(i)}) for i in range(2)]
    _finish(single)
    memory_line = _finish(eight).strip().splitlines()[-1]
    for proc in pair:
        _finish(proc)
    return out, memory_line


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return dict(data)


def _assert_same_run(reference: dict, other: dict) -> None:
    np.testing.assert_allclose(other["losses"], reference["losses"], atol=TOL, rtol=0)
    assert reference.keys() == other.keys()
    for key in reference:
        np.testing.assert_allclose(other[key], reference[key], atol=TOL, rtol=0, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["mae", "seislm"])
@pytest.mark.parametrize("mesh", ["222", "181"])
def test_sharded_steps_equal_one_device(runs, task, mesh):
    out, _ = runs
    reference = _load(out / "one" / f"{task}_111.npz")
    assert np.all(np.diff(reference["losses"]) != 0), "the steps must actually change the model"
    _assert_same_run(reference, _load(out / "eight" / f"{task}_{mesh}.npz"))


@pytest.mark.slow
def test_two_processes_equal_one(runs):
    out, _ = runs
    _assert_same_run(_load(out / "one" / "mae_111.npz"), _load(out / "two" / "mae_211.npz"))
    _assert_same_run(_load(out / "one" / "seislm_111.npz"), _load(out / "two" / "seislm_121.npz"))


@pytest.mark.slow
def test_restore_onto_another_mesh(runs):
    out, _ = runs
    for run_dir, saved in (("eight", "seislm_181.npz"), ("two", "seislm_121.npz")):
        restored, trained = _load(out / run_dir / "restored.npz"), _load(out / run_dir / saved)
        for key in restored:
            np.testing.assert_array_equal(restored[key], trained[key], err_msg=key)


@pytest.mark.slow
def test_gradient_accumulation_equals_full_batch(runs):
    out, _ = runs
    _assert_same_run(_load(out / "one" / "mae_111.npz"), _load(out / "one" / "mae_111_2.npz"))


@pytest.mark.slow
def test_fsdp_state_memory_is_an_eighth(runs):
    import json

    _, memory_line = runs
    for task, sizes in json.loads(memory_line).items():
        assert sizes["fsdp"] <= 1.1 / 8 * sizes["replicated"], (task, sizes)


def _cli_train(workdir: Path, *extra: str, stderr=subprocess.PIPE) -> subprocess.Popen:
    args = [sys.executable, "-m", "seisfuse.cli", "train", "--workdir", str(workdir),
            "--config", str(ROOT / "configs/mae_pretrain.py:tiny"), "--total_steps=12",
            "--checkpoint_every=2", "--log_every=2", "--data.num_examples=64", "--wandb.mode=disabled",
            "--tensorboard=False", *extra]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)


def _final_params(workdir: Path, step: int) -> dict[str, np.ndarray]:
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(workdir / "checkpoints" / str(step) / "state")
    return {k: np.asarray(v) for k, v in flatten_dict(state["params"], sep="/").items()}


def _wait_for_checkpoint(workdir: Path, proc: subprocess.Popen, minimum: int) -> int:
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
        if steps and max(steps) >= minimum:
            return max(steps)
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint >= {minimum} appeared: {proc.communicate()[1][-2000:]}")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_parameters(tmp_path):
    straight = _cli_train(tmp_path / "straight")
    killed = _cli_train(tmp_path / "killed")
    _wait_for_checkpoint(tmp_path / "killed", killed, 4)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    saved = [int(p.name) for p in (tmp_path / "killed" / "checkpoints").glob("*") if p.name.isdigit()]
    assert max(saved) < 12, "the run must be killed mid-way"
    # A half-written save (what a kill during an async save leaves) must be ignored.
    (tmp_path / "killed" / "checkpoints" / "11.orbax-checkpoint-tmp-0" / "state").mkdir(parents=True)
    resumed = _cli_train(tmp_path / "killed", "--resume")
    _finish(resumed)
    _finish(straight)
    expected, got = _final_params(tmp_path / "straight", 12), _final_params(tmp_path / "killed", 12)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    log = tmp_path / "stderr.txt"
    with log.open("w") as handle:
        proc = _cli_train(tmp_path / "run", "--total_steps=100000", "--checkpoint_every=100000",
                          stderr=handle)
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline and "step 4/" not in log.read_text():
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=300)
    assert proc.returncode == 0, log.read_text()[-2000:]
    steps = [int(p.name) for p in (tmp_path / "run" / "checkpoints").glob("*") if p.name.isdigit()]
    assert len(steps) == 1 and 0 < steps[0] < 100000


def _tiny_config(**overrides):
    config = load_config(str(ROOT / "configs/mae_pretrain.py:tiny"),
                         ["total_steps=4", "optimizer.warmup_steps=1", "wandb.mode=disabled",
                          "tensorboard=False", "data.source='random'", "checkpoint_every=100"])
    config.update(overrides)
    return config


class _PoisonedBatches(RandomBatches):
    """Random batches with NaN in the batch of step 2."""

    def __next__(self):
        batch = super().__next__()
        if self.count == 3:
            batch["image"][0, 0, 0, 0] = np.nan
        return batch


def test_nonfinite_loss_stops_with_the_step_named(tmp_path):
    config = _tiny_config()
    task = make_task(config)
    with pytest.raises(NonFiniteError, match="at step 2"):
        train(task, config, tmp_path / "stop", data=_PoisonedBatches(task, 8, config.seed))


def test_nonfinite_update_can_be_skipped(tmp_path, capsys):
    config = _tiny_config(on_nonfinite="skip")
    task = make_task(config)
    state = train(task, config, tmp_path / "skip", data=_PoisonedBatches(task, 8, config.seed))
    assert int(state.step) == 4
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state.params))
    assert "skipped 1 updates" in capsys.readouterr().out


def test_existing_checkpoints_need_resume(tmp_path):
    config = _tiny_config(total_steps=2, checkpoint_every=2)
    task = make_task(config)
    train(task, config, tmp_path)
    saved = load_run_config(tmp_path)
    assert saved.total_steps == 2 and saved.model.preset == "tiny", "the run's config is kept beside it"
    with pytest.raises(FileExistsError, match="resume"):
        train(task, config, tmp_path)


def test_config_overrides_are_typed_and_checked():
    config = load_config(str(ROOT / "configs/mae_pretrain.py:tiny"),
                         ["--config.optimizer.lr=2", "mesh.fsdp=2", "wandb.mode=disabled", "tensorboard=0"])
    assert config.optimizer.lr == 2.0 and isinstance(config.optimizer.lr, float)
    assert config.mesh.fsdp == 2 and config.wandb.mode == "disabled" and config.tensorboard is False
    with pytest.raises(KeyError, match="optimizer.lrr"):
        load_config(str(ROOT / "configs/mae_pretrain.py:tiny"), ["optimizer.lrr=1"])
    base = load_config(str(ROOT / "configs/mae_pretrain.py:base"))
    assert base.batch_size == 9280 and base.optimizer.lr == pytest.approx(1.5e-4 * 9280 / 256)


def test_layer_decay_and_gumbel_schedules():
    params = {"cls_token": np.zeros(1), "patch_embed": {"kernel": np.zeros(1)},
              "blocks_0": {"w": np.zeros(1)}, "blocks_1": {"w": np.zeros(1)}, "norm": {"scale": np.zeros(1)}}
    scales = mae_layer_scales(params, depth=2, layer_decay=0.5)
    assert scales["cls_token"] == scales["patch_embed"]["kernel"] == 0.125
    assert (scales["blocks_0"]["w"], scales["blocks_1"]["w"], scales["norm"]["scale"]) == (0.25, 0.5, 1.0)
    assert float(cosine_anneal(0, 100, 2.0, 0.5)) == pytest.approx(2.0)
    assert float(cosine_anneal(50, 100, 2.0, 0.5)) == pytest.approx(1.25)
    assert float(cosine_anneal(100, 100, 2.0, 0.5)) == pytest.approx(0.5)


def test_importing_seisfuse_leaves_distributed_start_possible():
    """Configs are built at import time; nothing may touch the XLA backend before a multi-host run
    calls jax.distributed.initialize."""
    code = ("import seisfuse.cli, seisfuse.demo, seisfuse.train.loop, seisfuse.train.tasks, "
            "seisfuse.models.joint\n"
            "from seisfuse.parallel import initialize_distributed\n"
            f"initialize_distributed('127.0.0.1:{21000 + os.getpid() % 20000}', 1, 0)\n"
            "import jax\nassert jax.process_count() == 1\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
