"""CLIP and SigLIP losses: values against direct numpy formulas, the temperature clamp, and the
sharded versions (all-gather / ppermute ring) against one device on 8 fake CPU devices."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh

from seisfuse import losses
from seisfuse.parallel import make_mesh

ROOT = Path(__file__).resolve().parents[1]


def _pairs(n: int = 12, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d))
    b = a + rng.standard_normal((n, d))
    return tuple((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32) for x in (a, b))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_clip_loss_matches_the_formula():
    a, b = _pairs()
    t = 1 / 0.07
    logits = t * a.astype(np.float64) @ b.T.astype(np.float64)
    expected = -0.5 * (np.mean(np.diag(_log_softmax(logits))) + np.mean(np.diag(_log_softmax(logits.T))))
    got = losses.clip_loss(jnp.asarray(a), jnp.asarray(b), jnp.float32(losses.CLIP_LOGIT_SCALE_INIT))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_clip_temperature_is_clamped_at_100():
    a, b = _pairs()
    at_100 = losses.clip_loss(a, b, jnp.float32(math.log(100.0)))
    above = losses.clip_loss(a, b, jnp.float32(math.log(500.0)))
    np.testing.assert_allclose(float(above), float(at_100), rtol=1e-6)
    grad = jax.grad(lambda s: losses.clip_loss(a, b, s))(jnp.float32(math.log(500.0)))
    assert float(grad) == 0.0
    assert float(jax.grad(lambda s: losses.clip_loss(a, b, s))(jnp.float32(1.0))) != 0.0


def test_siglip_loss_matches_the_formula():
    a, b = _pairs()
    t, bias = 10.0, -10.0
    logits = t * a.astype(np.float64) @ b.T.astype(np.float64) + bias
    z = 2 * np.eye(len(a)) - 1
    expected = np.sum(np.log1p(np.exp(-z * logits))) / len(a)
    got = losses.siglip_loss(a, b, jnp.float32(losses.SIGLIP_LOGIT_SCALE_INIT),
                             jnp.float32(losses.SIGLIP_BIAS_INIT))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_initial_values_follow_the_papers():
    assert math.isclose(math.exp(losses.CLIP_LOGIT_SCALE_INIT), 1 / 0.07)
    assert math.isclose(math.exp(losses.SIGLIP_LOGIT_SCALE_INIT), 10.0)
    assert losses.SIGLIP_BIAS_INIT == -10.0


def test_losses_reject_bad_input():
    a, b = _pairs()
    with pytest.raises(ValueError, match="one shape"):
        losses.clip_loss(a, b[:5], jnp.float32(1.0))
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        losses.siglip_loss(a[0], b[0], jnp.float32(1.0), jnp.float32(0.0))


def test_batch_must_divide_over_the_mesh_batch_axes():
    mesh = AbstractMesh((2, 4, 1), ("data", "fsdp", "tensor"))
    a, b = _pairs(n=12)
    with pytest.raises(ValueError, match="not divisible by the 8 batch shards"):
        losses.siglip_loss(a, b, jnp.float32(1.0), jnp.float32(0.0), mesh=mesh)
    one = make_mesh(devices=jax.devices()[:1])
    assert np.isfinite(float(losses.clip_loss(a, b, jnp.float32(1.0), mesh=one)))


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("contrastive")
    runs = {}
    procs = []
    for devices in (1, 8):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        path = out / f"d{devices}.npz"
        command = [sys.executable, "-m", "tests.contrastive_worker", str(path)]
        procs.append((devices, path, subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                      stderr=subprocess.PIPE, text=True)))
    for devices, path, proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        runs[devices] = dict(np.load(path))
    return runs[1], runs[8]


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["811", "241", "222"])
@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_sharded_losses_and_gradients_match_one_device(sharded_results, loss, mesh):
    single, sharded = sharded_results
    keys = [k for k in single if k.startswith(f"{loss}_111/") and "full_square" not in k]
    assert len(keys) == (4 if loss == "clip" else 5)
    for key in keys:
        np.testing.assert_allclose(sharded[key.replace("_111/", f"_{mesh}/")], single[key], atol=1e-5,
                                   rtol=0, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_sharded_losses_never_hold_the_full_batch_square(sharded_results, loss):
    single, sharded = sharded_results
    assert bool(single[f"{loss}_111/full_square"])  # the check does see a B x B block when there is one
    for mesh in ("811", "241", "222"):
        assert not bool(sharded[f"{loss}_{mesh}/full_square"]), mesh


def test_align_task_gradients_on_a_sharded_batch_match_one_device(sharded_results):
    single, sharded = sharded_results
    keys = [k for k in single if k.startswith("task_111/")]
    assert len(keys) > 20
    for key in keys:
        np.testing.assert_allclose(sharded[key.replace("task_111/", "task_222/")], single[key], atol=1e-5,
                                   rtol=0, err_msg=key)
