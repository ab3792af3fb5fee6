"""Joint embedding model and align task: towers match their backbones, freezing policies become
optimizer labels (no state, no update), released weights load into towers, a third modality
needs no change to the loss, configs build, bad input is named."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from seisfuse.convert import save_converted
from seisfuse.data.pipeline import SyntheticSource, make_dataset
from seisfuse.data.spectrogram import mel_image
from seisfuse.models.joint import JointConfig, JointEmbedding, TowerConfig, pooled_width
from seisfuse.models.mae import MAEConfig, MaskedAutoencoder
from seisfuse.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2ForPreTraining
from seisfuse.train.config import load_config
from seisfuse.train.loop import RandomBatches, Trainer, make_data
from seisfuse.train.optim import joint_param_labels, parse_trainable
from seisfuse.train.tasks import AlignTask, make_task

SMALL_SFM = {"img_size": 32, "patch_size": 8}
SMALL_WAV = {"conv_kernel": (4, 4), "conv_stride": (4, 4), "num_conv_pos_embeddings": 16}


def small_cfg(pooling: str = "mean", head: str = "linear") -> JointConfig:
    return JointConfig((TowerConfig.from_preset("image", "sfm", "tiny", pooling, **SMALL_SFM),
                        TowerConfig.from_preset("waveform", "seislm", "tiny", **SMALL_WAV)),
                       embed_dim=16, head=head)


def inputs(batch: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((batch, 32, 32, 1)).astype(np.float32),
            "waveform": rng.standard_normal((batch, 400, 3)).astype(np.float32)}


def init_params(cfg: JointConfig) -> dict:
    model = JointEmbedding(cfg)
    return jax.jit(lambda key: nn.unbox(model.init(key, inputs(1))["params"]))(jax.random.key(0))


@pytest.fixture(scope="module")
def model_and_params():
    cfg = small_cfg()
    return cfg, JointEmbedding(cfg), init_params(cfg)


def test_embeddings_are_unit_vectors_of_the_shared_dimension(model_and_params):
    cfg, model, params = model_and_params
    apply = jax.jit(model.apply)
    out = apply({"params": params}, inputs())
    assert set(out) == {"image", "waveform"}
    for z in out.values():
        assert z.shape == (3, 16)
        np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    only = apply({"params": params}, {"waveform": inputs()["waveform"]})
    assert set(only) == {"waveform"}
    np.testing.assert_allclose(only["waveform"], out["waveform"], atol=1e-6)
    with pytest.raises(ValueError, match="unknown modalities"):
        apply({"params": params}, {"text": np.zeros((1, 4))})


@pytest.mark.parametrize("pooling", ["cls", "mean", "flatten", "station"])
def test_image_tower_pools_the_sfm_encoder(model_and_params, pooling):
    cfg = small_cfg(pooling)
    params = model_and_params[2] if pooling in ("cls", "mean") else init_params(cfg)
    x = inputs()["image"]
    z = JointEmbedding(cfg).apply({"params": params}, {"image": x})["image"]
    backbone = cfg.tower("image").backbone
    latent, _, _ = MaskedAutoencoder(backbone).apply({"params": params["image"]["backbone"]["encoder"]}, x,
                                                     method=MaskedAutoencoder.encode)
    pooled = {"cls": latent[:, 0], "mean": latent[:, 1:].mean(axis=1),
              "flatten": latent[:, 1:].reshape(3, -1),  # 16 patches x 64, in order
              # station: a 4 x 4 grid of 8-pixel patches; traces 15 and 16 lie in columns 1 and 2
              "station": latent[:, 1:].reshape(3, 4, 4, 64)[:, :, 1:3].reshape(3, -1)}[pooling]
    width = {"flatten": 1024, "station": 512}.get(pooling, 64)
    assert pooled.shape[1] == pooled_width(cfg.tower("image"), 0) == width
    projected = pooled @ params["image"]["head"]["proj"]["kernel"]
    np.testing.assert_allclose(z, projected / np.linalg.norm(projected, axis=1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "flatten"])
def test_waveform_tower_pools_the_seislm_hidden_states(model_and_params, pooling):
    cfg = JointConfig((small_cfg().towers[0],
                       TowerConfig.from_preset("waveform", "seislm", "tiny", pooling, **SMALL_WAV)),
                      embed_dim=16)
    params = model_and_params[2] if pooling == "mean" else init_params(cfg)
    x = inputs()["waveform"]
    z = JointEmbedding(cfg).apply({"params": params}, {"waveform": x})["waveform"]
    hidden = Wav2Vec2ForPreTraining(cfg.tower("waveform").backbone).apply(
        {"params": params["waveform"]["backbone"]["encoder"]}, x, method=Wav2Vec2ForPreTraining.encode)
    assert hidden.shape == (3, 25, 32)  # 400 samples -> 100 -> 25 frames (kernels and strides 4)
    pooled = hidden.mean(axis=1) if pooling == "mean" else hidden.reshape(3, -1)
    assert pooled.shape[1] == pooled_width(cfg.tower("waveform"), 400)
    projected = pooled @ params["waveform"]["head"]["proj"]["kernel"]
    np.testing.assert_allclose(z, projected / np.linalg.norm(projected, axis=1, keepdims=True), atol=1e-5)
    if pooling == "flatten":  # flattened frames fix the input length
        with pytest.raises(ValueError, match="head takes 800 pooled features, got 384"):
            JointEmbedding(cfg).apply({"params": params}, {"waveform": x[:, :200]})
        boxed = jax.jit(JointEmbedding(cfg).init)(jax.random.key(0), inputs(1))  # partitioning metadata kept
        assert jax.jit(JointEmbedding(cfg).apply)(boxed, {"waveform": x})["waveform"].shape == (3, 16)


def test_station_pooling_needs_a_section_image():
    with pytest.raises(ValueError, match="pooling 'station' needs an image"):
        TowerConfig.from_preset("waveform", "seislm", "tiny", "station", **SMALL_WAV)
    with pytest.raises(ValueError, match="a Mel image has no station"):
        TowerConfig.from_preset("waveform", "mel-sfm", "tiny", "station")


def test_mlp_head_is_as_wide_as_the_tower_whatever_the_pooling():
    cfg = small_cfg("flatten", head="mlp")
    head = init_params(cfg)["image"]["head"]
    assert head["hidden"]["kernel"].shape == (1024, 64) and head["proj"]["kernel"].shape == (64, 16)


def test_mel_tower_is_sfm_on_the_mel_image():
    tower = TowerConfig.from_preset("waveform", "mel-sfm", "tiny")
    cfg = JointConfig((TowerConfig.from_preset("image", "sfm", "tiny"), tower), embed_dim=8, head="mlp")
    waveforms = np.random.default_rng(3).standard_normal((2, 3001, 3)).astype(np.float32)
    model = JointEmbedding(cfg)
    example = {"waveform": waveforms[:1], "image": np.zeros((1, 224, 224, 1), np.float32)}
    params = jax.jit(lambda key: nn.unbox(model.init(key, example)["params"]))(jax.random.key(1))
    z = jax.jit(model.apply)({"params": params}, {"waveform": waveforms})["waveform"]
    latent, _, _ = MaskedAutoencoder(tower.backbone).apply(
        {"params": params["waveform"]["backbone"]["encoder"]}, mel_image(waveforms),
        method=MaskedAutoencoder.encode)
    head = params["waveform"]["head"]
    hidden = jax.nn.gelu(latent[:, 1:].mean(axis=1) @ head["hidden"]["kernel"] + head["hidden"]["bias"],
                         approximate=False)
    projected = hidden @ head["proj"]["kernel"]
    np.testing.assert_allclose(z, projected / np.linalg.norm(projected, axis=1, keepdims=True), atol=1e-5)


def test_bad_configs_and_inputs_are_named(model_and_params):
    _, model, params = model_and_params
    with pytest.raises(ValueError, match="no cls token"):
        TowerConfig.from_preset("waveform", "seislm", "tiny", pooling="cls")
    with pytest.raises(ValueError, match="unknown tower kind"):
        TowerConfig.from_preset("text", "bert", "tiny")
    with pytest.raises(ValueError, match="distinct modality names"):
        JointConfig((TowerConfig.from_preset("image", "sfm", "tiny"),) * 2)
    with pytest.raises(ValueError, match="224x224x1 Mel images"):
        TowerConfig.from_preset("waveform", "mel-sfm", "tiny", img_size=112)
    with pytest.raises(ValueError, match="NHWC"):
        model.apply({"params": params}, {"image": np.zeros((2, 1, 32, 32))})
    with pytest.raises(ValueError, match="channels-first"):
        model.apply({"params": params}, {"waveform": np.zeros((2, 3, 400))})


def test_config_round_trips_through_a_dict():
    cfg = small_cfg("cls", "mlp")
    assert JointConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown JointConfig fields"):
        JointConfig.from_dict({**cfg.to_dict(), "fusion": "early"})


# --------------------------------------------------------------------------- freezing


def labels_of(params, trainable) -> dict[str, str]:
    return flatten_dict(joint_param_labels(small_cfg(), params, trainable), sep="/")


def test_freezing_policies_label_the_right_parameters(model_and_params):
    _, _, params = model_and_params
    lit = labels_of(params, {"image": "none", "waveform": "none"})
    assert all(v == "frozen" for k, v in lit.items() if "/backbone/" in k)
    assert lit["image/head/proj/kernel"] == lit["waveform/head/proj/kernel"] == "decay"
    assert lit["logit_scale"] == lit["logit_bias"] == "no_decay"

    last = labels_of(params, {"image": "last:1"})
    trained = {k for k, v in last.items() if k.startswith("image/backbone") and v != "frozen"}
    assert trained and all(k.startswith(("image/backbone/encoder/blocks_1/", "image/backbone/encoder/norm/"))
                           for k in trained)
    assert last["image/backbone/encoder/blocks_1/attn/query/kernel"] == "decay"
    assert last["image/backbone/encoder/blocks_1/norm1/scale"] == "no_decay"
    assert last["image/backbone/encoder/patch_embed/kernel"] == "frozen"
    assert all(v != "frozen" for k, v in last.items() if k.startswith("waveform/"))  # default: all

    full = labels_of(params, {})
    assert full["image/backbone/encoder/pos_embed"] == "frozen"  # SFM's fixed sin-cos table
    assert sum(v == "frozen" for v in full.values()) == 1

    wav = labels_of(params, {"waveform": "last:1"})
    trained = {k for k, v in wav.items() if k.startswith("waveform/backbone") and v != "frozen"}
    assert trained == {k for k in wav if k.startswith(("waveform/backbone/encoder/wav2vec2/encoder/layers_1/",
                                                        "waveform/backbone/encoder/wav2vec2/encoder/layer_norm/"))}


def test_freezing_policy_errors():
    assert parse_trainable("all", 4) == 4 and parse_trainable("none", 4) == 0
    assert parse_trainable("last:2", 4) == parse_trainable(2, 4) == 2
    with pytest.raises(ValueError, match="'all', 'none' or 'last:K'"):
        parse_trainable("some", 4)
    with pytest.raises(ValueError, match="asks for 5 blocks"):
        parse_trainable("last:5", 4)
    with pytest.raises(ValueError, match="unknown modalities"):
        joint_param_labels(small_cfg(), {}, {"text": "none"})


def tiny_align_config(**model_changes):
    config = load_config("configs/align.py:tiny", ["batch_size=4", "total_steps=2",
                                                   "optimizer.warmup_steps=1", "wandb.mode=disabled"])
    for key, value in model_changes.items():
        modality, field = key.split("__")
        config.model[modality][field] = value
    return config


def test_frozen_towers_get_no_optimizer_state_and_no_update():
    config = tiny_align_config(image__trainable="none", waveform__trainable="last:1")
    task = make_task(config)
    trainer = Trainer(task, config)
    state = trainer.init_state(jax.random.key(0))
    before = jax.device_get(state.params)
    labels = flatten_dict(task.param_labels(before), sep="/")
    data = RandomBatches(task, trainer.local_batch, 0)
    for step in range(2):  # the warm-up gives step 0 a zero learning rate
        state, metrics = trainer.step(state, trainer.global_batch(next(data), step))
        assert bool(metrics["finite"])
    after = flatten_dict(jax.device_get(state.params), sep="/")
    changed = {k for k, old in flatten_dict(before, sep="/").items() if not np.array_equal(old, after[k])}
    assert not {k for k in changed if labels[k] == "frozen"}
    assert {"image/head/proj/kernel", "logit_scale",
            "waveform/backbone/encoder/wav2vec2/encoder/layers_1/attention/query/kernel"} <= changed
    trained = sum(v.size for k, v in flatten_dict(before, sep="/").items() if labels[k] != "frozen")
    state_size = sum(np.size(x) for x in jax.tree.leaves(state.opt_state))
    assert trained * 2 <= state_size <= trained * 2 + 16  # Adam's mu and nu for trained params only


# --------------------------------------------------------------------------- released weights


def test_towers_start_from_converted_weights(tmp_path):
    sfm_cfg = MAEConfig.preset("tiny")  # with its decoder, as `seisfuse convert sfm` writes it
    sfm = jax.jit(lambda key: nn.unbox(MaskedAutoencoder(sfm_cfg).init(
        key, jnp.zeros((1, 224, 224, 1)), noise=jnp.zeros((1, 196)))["params"]))(jax.random.key(5))
    save_converted(tmp_path / "sfm", "sfm", sfm_cfg.to_dict(), sfm)
    wav_cfg = Wav2Vec2Config.preset("tiny")
    frames = wav_cfg.frames(3001)
    wav = jax.jit(lambda key: nn.unbox(Wav2Vec2ForPreTraining(wav_cfg).init(
        {"params": key, "gumbel": key}, jnp.zeros((1, 3001, 3)),
        mask_time_indices=jnp.zeros((1, frames), bool),
        sampled_negative_indices=jnp.zeros((1, frames, wav_cfg.num_negatives), jnp.int32))["params"]))(
        jax.random.key(6))
    save_converted(tmp_path / "seislm", "seislm", wav_cfg.to_dict(), wav)

    config = tiny_align_config(image__weights=str(tmp_path / "sfm"),
                               waveform__weights=str(tmp_path / "seislm"))
    config.model.waveform.overrides = {}
    task = make_task(config)
    assert task.cfg.tower("image").backbone.decoder is False
    params = jax.jit(lambda key: nn.unbox(task.init_params(key)))(jax.random.key(0))
    for key, value in flatten_dict(params["image"]["backbone"]["encoder"], sep="/").items():
        np.testing.assert_array_equal(value, flatten_dict(sfm, sep="/")[key], err_msg=key)
    for key, value in flatten_dict(params["waveform"]["backbone"]["encoder"], sep="/").items():
        np.testing.assert_array_equal(value, flatten_dict(wav, sep="/")[key], err_msg=key)

    swapped = tiny_align_config(image__weights=str(tmp_path / "seislm"))
    with pytest.raises(ValueError, match="needs converted sfm weights, got 'seislm'"):
        make_task(swapped)
    mismatched = tiny_align_config(waveform__weights=str(tmp_path / "seislm"))  # keeps stride overrides
    task = make_task(mismatched)
    with pytest.raises(ValueError, match="do not fit the tower"):
        jax.eval_shape(task.init_params, jax.random.key(0))


# --------------------------------------------------------------------------- a third modality


def test_a_third_modality_needs_no_change_to_the_loss_or_the_loop():
    towers = small_cfg().towers + (TowerConfig.from_preset("spectrogram", "mel-sfm", "tiny"),)
    cfg = JointConfig(towers, embed_dim=8, logit_bias_init=-10.0)
    task = AlignTask(cfg, "siglip", pairs=(("image", "waveform"), ("image", "spectrogram")),
                     trainable=(("spectrogram", "none"),), mesh_axes=(("data", 1),),
                     num_samples=3001)
    rng = np.random.default_rng(0)
    batch = {"image": rng.standard_normal((2, 32, 32, 1)).astype(np.float32),
             "waveform": rng.standard_normal((2, 3001, 3)).astype(np.float32)}
    assert set(task.random_example(rng)) == {"image", "waveform"}
    params = jax.jit(lambda key: nn.unbox(task.init_params(key)))(jax.random.key(0))
    assert set(params) == {"image", "waveform", "spectrogram", "logit_scale", "logit_bias"}
    grad_fn = jax.jit(jax.value_and_grad(task.loss, has_aux=True))
    (loss, metrics), grads = grad_fn(params, batch, jax.random.key(0), 0)
    assert set(metrics) >= {"loss/image-waveform", "loss/image-spectrogram", "temperature", "bias"}
    np.testing.assert_allclose(loss, (metrics["loss/image-waveform"] + metrics["loss/image-spectrogram"]) / 2,
                               rtol=1e-6)
    flat = flatten_dict(grads, sep="/")
    assert all(np.all(v == 0) for k, v in flat.items() if k.startswith("spectrogram/backbone"))  # frozen
    assert np.any(flat["spectrogram/head/proj/kernel"] != 0)
    assert np.any(flat["waveform/backbone/encoder/wav2vec2/encoder/layers_0/attention/query/kernel"] != 0)
    with pytest.raises(KeyError, match="no tower for modality 'text'"):
        dataclasses.replace(task, pairs=(("image", "text"),))


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("variant", ["tiny", "tiny-mel", "base", "large", "base-mel"])
def test_align_config_variants_build_their_task(variant):
    config = load_config(f"configs/align.py:{variant}")
    task = make_task(config)
    assert isinstance(task, AlignTask) and task.data_task == "paired"
    kinds = {t.modality: t.kind for t in task.cfg.towers}
    assert kinds == {"image": "sfm", "waveform": "mel-sfm" if variant.endswith("-mel") else "seislm"}
    assert task.flops_per_example() > 0
    trained, frozen = (make_task(load_config(f"configs/align.py:{variant}", [
        f"model.image.trainable={policy}", f"model.waveform.trainable={policy}"]))
        for policy in ("all", "none"))
    assert frozen.flops_per_example() < trained.flops_per_example() / 2
    with pytest.raises(ValueError, match="unknown variant"):
        load_config("configs/align.py:huge")


def test_engine_augments_the_synthetic_pairs_as_the_demo_unless_data_augment_is_false():
    """`seisfuse train --config configs/align.py:tiny` trains the demo's recipe, augmentation included."""
    waveforms = {}
    for overrides in ([], ["data.augment=False"]):
        config = load_config("configs/align.py:tiny", ["batch_size=4", "data.num_examples=8", *overrides])
        task = make_task(config)
        batch = next(make_data(task, config, Trainer(task, config)))
        augment = not overrides
        expected = next(iter(make_dataset(SyntheticSource(8, seed=0), task="paired", batch_size=4,
                                          seed=config.seed, augment=augment, p_window=(10, 160))))
        np.testing.assert_array_equal(batch["waveform"], expected["waveform"])
        waveforms[augment] = batch["waveform"]
    assert not np.array_equal(waveforms[True], waveforms[False])


def test_p_window_sets_the_waveform_length_and_is_refused_by_the_mel_tower():
    assert make_task(load_config("configs/align.py:tiny")).num_samples == 160  # data.p_window [10, 160]
    assert make_task(load_config("configs/align.py:tiny-mel")).num_samples == 3001
    mel = load_config("configs/align.py:tiny-mel")
    mel.data.p_window = [50, 512]
    with pytest.raises(ValueError, match="mel-sfm tower .* whole 3001-sample records"):
        make_task(mel)


def test_model_logit_scale_init_sets_the_learnable_temperature_and_defaults_to_the_loss():
    def task(variant: str, *overrides: str) -> AlignTask:
        return make_task(load_config(f"configs/align.py:{variant}", list(overrides)))

    tiny = task("tiny", "model.logit_scale_init=2.5")
    assert float(nn.unbox(tiny.init_params(jax.random.key(0)))["logit_scale"]) == pytest.approx(2.5)
    assert task("tiny").cfg.logit_scale_init == 1.0  # the demo's: see demo_config
    assert task("base").cfg.logit_scale_init == pytest.approx(np.log(10.0))  # SigLIP's t' = log 10
    assert task("base", "loss='clip'").cfg.logit_scale_init == pytest.approx(np.log(1 / 0.07))
    assert task("base", "model.logit_scale_init=2.0").cfg.logit_scale_init == 2.0


def test_unknown_loss_is_named():
    with pytest.raises(ValueError, match="unknown contrastive loss 'triplet'"):
        AlignTask(small_cfg(), "triplet")
    with pytest.raises(ValueError, match="needs a learnable bias"):
        AlignTask(dataclasses.replace(small_cfg(), logit_bias_init=None), "siglip")
