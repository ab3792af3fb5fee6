"""SeisLM downstream models: parity with the PyTorch originals, the fine-tuned converter, errors.

References (seisfuse/testing/seislm_finetune_torch.py) carry the original key names, perturbed norms,
biases, BatchNorm running statistics and layer weights; they are saved as Lightning does and read
back with `load_seislm_finetuned`. Parity is max|ours − torch| / max(1, max|torch|): classifier
logits <= 1e-5, picker probabilities <= 1e-4 (conftest runs JAX matmuls at full float32 precision).
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from seisfuse.convert.seislm import (
    expected_shapes,
    export_seislm,
    export_seislm_finetuned,
    finetuned_model_config,
    finetuned_model_from_config,
    load_seislm,
    load_seislm_finetuned,
    state_dict_to_params,
)
from seisfuse.convert.torch_format import CheckpointError
from seisfuse.models.seislm_heads import (
    SeisLMClassifier,
    SeisLMPicker,
    interpolate_linear,
    vector_cross_entropy,
)
from seisfuse.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2ForPreTraining, Wav2Vec2Model, weighted_layer_sum
from seisfuse.testing import seislm_finetune_torch as ft
from seisfuse.testing import wav2vec2_torch as ref

T = 3001
TOLERANCE = {"pick": 1e-4, "classify": 1e-5}
TINY = Wav2Vec2Config.preset("tiny")


def relative_error(ours, theirs) -> float:
    theirs = np.asarray(theirs, np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - theirs).max() / max(1.0, np.abs(theirs).max()))


def same_trunk(a: Wav2Vec2Config, b: Wav2Vec2Config) -> bool:
    """Equal in everything the downstream models use (a fine-tuned file has no quantizer sizes)."""
    used = ("num_attention_heads", "conv_stride", "do_stable_layer_norm", "layer_norm_eps",
            "feat_extract_norm")
    return (expected_shapes(a, pretraining=False) == expected_shapes(b, pretraining=False)
            and all(getattr(a, f) == getattr(b, f) for f in used))


def torch_forward(model, x: np.ndarray) -> np.ndarray:
    """The reference's output in seisfuse's layout (picker [B, T, classes])."""
    with torch.no_grad():
        out = model(torch.from_numpy(x).transpose(1, 2)).numpy()
    return out.transpose(0, 2, 1) if out.ndim == 3 else out


def saved(tmp_path, task: str, cfg: Wav2Vec2Config = TINY, seed: int = 0, **head):
    """(reference model, path of its Lightning checkpoint)."""
    model = ft.build(ref.ref_config(cfg), ft.HeadConfig(task=task, **head), seed)
    path = tmp_path / f"{task}-{seed}.ckpt"
    ft.save_lightning_checkpoint(model, path)
    return model, path


def waveforms(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, T, 3)).astype(np.float32)


# ------------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize("size", [3001, 3000, 6000, 700, 5, 749])
def test_interpolation_has_torchs_weights(size):
    x = np.random.default_rng(1).standard_normal((2, 749, 5)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x).transpose(1, 2), size=size,
                                               mode="linear", align_corners=False).transpose(1, 2)
    assert np.abs(np.asarray(interpolate_linear(jnp.asarray(x), size)) - expected.numpy()).max() <= 5e-7


def test_vector_cross_entropy_is_the_originals():
    rng = np.random.default_rng(2)
    probs = jax.nn.softmax(jnp.asarray(rng.standard_normal((3, 50, 3)), jnp.float32), axis=-1)
    targets = jnp.asarray(rng.uniform(size=(3, 50, 3)), jnp.float32)
    p, t = torch.tensor(np.asarray(probs)), torch.tensor(np.asarray(targets))
    expected = ft.vector_cross_entropy(p.transpose(1, 2), t.transpose(1, 2))
    assert abs(float(vector_cross_entropy(probs, targets)) - float(expected)) <= 1e-6
    flat = ft.vector_cross_entropy(p[:, 0], t[:, 0])
    assert abs(float(vector_cross_entropy(probs[:, 0], targets[:, 0])) - float(flat)) <= 1e-6
    with pytest.raises(ValueError, match="probs and targets"):
        vector_cross_entropy(probs, targets[:, :, :2])


@pytest.mark.parametrize("stable", [True, False])
def test_hidden_states_follow_huggingfaces_order(stable):
    """N + 1 states: each layer's input, then the output (pre-LN: un-normed layer outputs and the
    final LayerNorm; post-LN: LayerNorm of the embedding first)."""
    cfg = Wav2Vec2Config.preset("tiny", do_stable_layer_norm=stable)
    torch_model = ref.build(ref.ref_config(cfg), seed=5)
    params, _ = state_dict_to_params({k: v.numpy() for k, v in torch_model.state_dict().items()}, cfg)
    x = waveforms(2, seed=5)[:, :800]
    last, _, states = jax.jit(Wav2Vec2Model(cfg).apply)({"params": params["wav2vec2"]}, x)
    with torch.no_grad():
        expected = ft.hidden_states(torch_model.wav2vec2, torch.from_numpy(x).transpose(1, 2))
        expected_last, _ = torch_model.wav2vec2(torch.from_numpy(x).transpose(1, 2))
    assert len(states) == cfg.num_hidden_layers + 1
    for ours, theirs in zip(states, expected, strict=True):
        assert np.abs(np.asarray(ours) - theirs.numpy()).max() <= 1e-5
    assert np.abs(np.asarray(last) - expected_last.numpy()).max() <= 1e-5
    weights = jnp.asarray([0.3, -1.0, 2.0])
    summed = weighted_layer_sum(states, weights)
    softmax = np.exp(weights) / np.exp(weights).sum()
    manual = sum(float(w) * np.asarray(s) for w, s in zip(softmax, states, strict=True))
    assert np.abs(np.asarray(summed) - manual).max() <= 1e-5
    with pytest.raises(ValueError, match="one weight per hidden state"):
        weighted_layer_sum(states, weights[:2])


# ------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("preset,task,weighted", [
    ("tiny", "pick", False), ("tiny", "pick", True), ("tiny", "classify", False),
    ("tiny", "classify", True), ("seislm-base", "pick", False), ("seislm-base", "classify", True)])
def test_parity_with_the_original(tmp_path, preset, task, weighted):
    cfg = Wav2Vec2Config.preset(preset)
    torch_model, path = saved(tmp_path, task, cfg, seed=1, use_weighted_layer_sum=weighted)
    model, variables = load_seislm_finetuned(path, task=task)
    assert isinstance(model, SeisLMPicker if task == "pick" else SeisLMClassifier)
    assert same_trunk(model.cfg, cfg) and model.use_weighted_layer_sum == weighted
    x = waveforms(2 if preset == "tiny" else 1, seed=1)
    ours = jax.jit(model.apply)(variables, x)
    expected = torch_forward(torch_model, x)
    assert ours.shape == expected.shape == ((x.shape[0], T, 3) if task == "pick" else (x.shape[0], 4))
    assert relative_error(ours, expected) <= TOLERANCE[task]
    if task == "pick":
        np.testing.assert_allclose(np.asarray(ours).sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("task", ["pick", "classify"])
def test_training_mode_batch_statistics_match_torch(tmp_path, task):
    """train=True normalises with batch statistics and moves the running ones as torch (unbiased
    variance, momentum 0.1)."""
    torch_model, path = saved(tmp_path, task, seed=2)
    model, variables = load_seislm_finetuned(path)
    x = waveforms(2, seed=2)
    ours, updated = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                                     rngs={"dropout": jax.random.key(0)}))(variables, x)
    torch_model.train()
    expected = torch_forward(torch_model, x)
    assert relative_error(ours, expected) <= TOLERANCE[task]
    assert relative_error(ours, torch_forward(torch_model.eval(), x)) > 1e-3  # the statistics matter
    prefix = "double_conv" if task == "pick" else "head.2"
    flax_path = ("double_conv",) if task == "pick" else ("head_2",)
    stats = updated["batch_stats"]
    for name in flax_path:
        stats = stats[name]
    running = torch_model.get_submodule(f"{prefix}.double_conv.5")
    assert np.abs(np.asarray(stats["double_conv_5"]["mean"]) - running.running_mean.numpy()).max() <= 1e-5
    assert np.abs(np.asarray(stats["double_conv_5"]["var"]) - running.running_var.numpy()).max() <= 1e-5


def test_dropout_draws_from_the_dropout_rng(tmp_path):
    _, path = saved(tmp_path, "classify", seed=3, head_dropout_rate=0.5)
    model, variables = load_seislm_finetuned(path)
    assert model.head_dropout_rate == 0.5
    x = waveforms(2, seed=3)
    run = jax.jit(lambda key: model.apply(variables, x, train=True, mutable=["batch_stats"],
                                          rngs={"dropout": key})[0])
    a, b, again = run(jax.random.key(0)), run(jax.random.key(1)), run(jax.random.key(0))
    np.testing.assert_array_equal(a, again)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


# ------------------------------------------------------------------------------- trees and files


@pytest.mark.parametrize("task", ["pick", "classify"])
def test_init_tree_is_the_converted_tree_and_holds_the_pretraining_trunk(tmp_path, task):
    torch_model, path = saved(tmp_path, task, seed=4, use_weighted_layer_sum=True)
    model, variables = load_seislm_finetuned(path)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, T, 3))))
    expected = jax.tree.map(lambda a: a.shape, nn.unbox(shapes))
    loaded = jax.tree.map(lambda a: a.shape, variables)
    if task == "classify":  # the released classifier kept the SpecAugment embedding; apply ignores it
        assert loaded["params"]["wav2vec2"].pop("masked_spec_embed") == (TINY.hidden_size,)
    assert loaded == expected
    pretraining = jax.eval_shape(lambda: Wav2Vec2ForPreTraining(TINY).init(
        jax.random.key(0), jnp.zeros((1, T, 3)), method="encode"))
    assert loaded["params"]["wav2vec2"] == jax.tree.map(lambda a: a.shape,
                                                        nn.unbox(pretraining["params"]["wav2vec2"]))
    assert "feature_extractor" in loaded["params"]["wav2vec2"]


@pytest.mark.parametrize("task,weighted", [("pick", True), ("classify", False)])
def test_export_loads_strictly_into_the_original(tmp_path, task, weighted):
    torch_model, path = saved(tmp_path, task, seed=5, use_weighted_layer_sum=weighted)
    model, variables = load_seislm_finetuned(path)
    out = tmp_path / "exported.ckpt"
    export_seislm_finetuned(model, variables, out)
    written = torch.load(out, weights_only=True)
    fresh = (ft.FrameClassifier if task == "pick" else ft.SequenceClassifier)(
        ref.ref_config(TINY), ft.HeadConfig(task=task, use_weighted_layer_sum=weighted))
    fresh.load_state_dict({k.removeprefix("model."): v for k, v in written["state_dict"].items()},
                          strict=True)
    for key, value in torch_model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(fresh.state_dict()[key], value), key
    again, variables_again = load_seislm_finetuned(out)
    assert again == model
    jax.tree.map(np.testing.assert_array_equal, variables_again, variables)
    # A fresh Flax model exports too, and the variables must be complete and of this model.
    fresh_variables = jax.jit(model.init)(jax.random.key(1), waveforms(1))
    export_seislm_finetuned(model, fresh_variables, tmp_path / "fresh.ckpt")
    with pytest.raises(CheckpointError, match="variables lack"):
        export_seislm_finetuned(model, {"params": fresh_variables["params"]}, tmp_path / "no-stats.ckpt")
    extra = {**fresh_variables, "params": {**fresh_variables["params"], "spare": {"kernel": jnp.zeros(2)}}}
    with pytest.raises(CheckpointError, match="spare"):
        export_seislm_finetuned(model, extra, tmp_path / "extra.ckpt")


def test_model_config_round_trips_through_json(tmp_path):
    _, path = saved(tmp_path, "classify", seed=6, use_weighted_layer_sum=True, classifier_proj_size=16)
    model, _ = load_seislm_finetuned(path)
    config = json.loads(json.dumps(finetuned_model_config(model)))
    assert config["task"] == "classify" and config["classifier_proj_size"] == 16
    assert finetuned_model_from_config(config) == model
    picker = SeisLMPicker(TINY, num_labels=3)
    assert finetuned_model_from_config(json.loads(json.dumps(finetuned_model_config(picker)))) == picker
    with pytest.raises(CheckpointError, match="task 'segment'"):
        finetuned_model_from_config({**config, "task": "segment"})
    with pytest.raises(CheckpointError, match="num_labels"):
        finetuned_model_from_config({**config, "num_labels": 3})
    with pytest.raises(CheckpointError, match="num_classes must be an integer in"):
        finetuned_model_from_config({**config, "num_classes": "4"})


def test_the_trunk_loader_still_reads_fine_tuned_files(tmp_path):
    torch_model, path = saved(tmp_path, "pick", seed=7)
    with pytest.warns(UserWarning, match="classifier.bias"):
        cfg, params = load_seislm(path)
    assert same_trunk(cfg, TINY) and set(params) == {"wav2vec2"}
    export_seislm(params, cfg, tmp_path / "trunk.pt")


# ------------------------------------------------------------------------------- errors


def test_the_wrong_task_is_named(tmp_path):
    _, classifier = saved(tmp_path, "classify", seed=8)
    with pytest.raises(CheckpointError, match=r"is a SeisLM event classifier .*not a phase picker"):
        load_seislm_finetuned(classifier, task="pick")
    pretraining = tmp_path / "pretrain.ckpt"
    ref.save_lightning_checkpoint(ref.build(ref.ref_config(TINY)), pretraining)
    with pytest.raises(CheckpointError, match="pretraining checkpoint .*load_seislm"):
        load_seislm_finetuned(pretraining)
    with pytest.raises(ValueError, match="task must be one of"):
        load_seislm_finetuned(classifier, task="detect")


def test_missing_unexpected_and_mis_shaped_keys_are_listed(tmp_path):
    torch_model, _ = saved(tmp_path, "pick", seed=9)
    checkpoint = ft.lightning_checkpoint(torch_model)
    state = checkpoint["state_dict"]
    del state["model.double_conv.double_conv.5.running_var"]
    del state["model.wav2vec2.encoder.layers.1.layer_norm.bias"]
    state["model.classifier.temperature"] = torch.ones(1)
    state["model.double_conv.double_conv.4.weight"] = torch.zeros(35, 35, 5)
    torch.save(checkpoint, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError) as err:
        load_seislm_finetuned(tmp_path / "bad.ckpt")
    message = str(err.value)
    assert "missing keys (2)" in message and "double_conv.double_conv.5.running_var" in message
    assert "wav2vec2.encoder.layers.1.layer_norm.bias" in message
    assert "unexpected keys (1): classifier.temperature" in message
    assert "double_conv.double_conv.4.weight: file (35, 35, 5), expected (35, 35, 3)" in message


def hostile(tmp_path, name: str, edit) -> object:
    """A classifier checkpoint whose pickled hyper_parameters `edit` changed."""
    torch_model, _ = saved(tmp_path, "classify", seed=10)
    checkpoint = ft.lightning_checkpoint(torch_model)
    edit(checkpoint["hyper_parameters"])
    path = tmp_path / f"{name}.ckpt"
    torch.save(checkpoint, path)
    return path


def plain_config(hyper, **values):
    hyper["model_config"] = {**hyper["model_config"].to_dict(), **values}


@pytest.mark.parametrize("name,edit,match", [
    ("heads", lambda h: setattr(h["model_config"], "num_attention_heads", -4),
     r"num_attention_heads must be an integer in \[1, 2147483647\], got -4"),
    ("huge", lambda h: plain_config(h, num_attention_heads=10**5000), "got an integer of 16610 bits"),
    ("stride", lambda h: setattr(h["model_config"], "conv_stride", [2, 0]), "conv_stride must be"),
    ("eps", lambda h: plain_config(h, layer_norm_eps="1e-5"), "layer_norm_eps must be a finite number"),
    ("nan", lambda h: plain_config(h, layer_norm_eps=float("nan")), "layer_norm_eps must be a finite"),
    ("flag", lambda h: plain_config(h, do_stable_layer_norm=1), "do_stable_layer_norm must be true or false"),
    ("dropout", lambda h: plain_config(h, head_dropout_rate=1.5), "head_dropout_rate must be"),
    ("classes", lambda h: plain_config(h, num_classes=True), "num_classes must be an integer"),
    ("disagree", lambda h: plain_config(h, num_classes=9), r"num_classes = 9 but the tensors say 4"),
    ("weighted", lambda h: plain_config(h, use_weighted_layer_sum=True), "use_weighted_layer_sum"),
])
def test_hostile_config_values_are_refused(tmp_path, name, edit, match):
    path = hostile(tmp_path, name, edit)
    with pytest.raises(CheckpointError, match=match):
        load_seislm_finetuned(path)


def test_deep_cyclic_or_odd_structures_are_refused(tmp_path):
    def cyclic(hyper):
        loop: list = []
        loop.append(loop)
        plain_config(hyper, notes=loop)

    def deep(levels):
        def edit(hyper):
            nested: list = []
            for _ in range(levels):
                nested = [nested]
            values = {**hyper["model_config"].to_dict(), "notes": nested}
            hyper["model_config"] = ml_collections.ConfigDict(values)
        return edit

    # The checkpoint reader refuses a cycle or 200 levels itself; 50 levels pass it and reach the
    # config reader's own, lower limit.
    cases = (("cyclic", cyclic, "reference cycle"), ("deep", deep(50), "nests deeper than 32"),
             ("deeper", deep(200), "nests more than 100 levels"))
    for name, edit, match in cases:
        path = hostile(tmp_path, name, edit)
        for loader in (load_seislm_finetuned, load_seislm):
            with pytest.raises(CheckpointError, match=match):
                loader(path)
    odd = hostile(tmp_path, "odd", lambda h: h.update(config=[1, 2]))
    load_seislm_finetuned(odd)  # a non-mapping 'config' entry is no config, not a crash
    torch.save({"state_dict": {3: torch.zeros(2)}}, tmp_path / "int-keys.ckpt")
    with pytest.raises(CheckpointError, match="keys that are not strings"):
        load_seislm_finetuned(tmp_path / "int-keys.ckpt")


def test_input_errors_name_the_problem(tmp_path):
    _, path = saved(tmp_path, "classify", seed=11)
    model, variables = load_seislm_finetuned(path)
    x = waveforms(1)
    with pytest.raises(ValueError, match="3 channels in the last axis.*channels-first"):
        model.apply(variables, x[:, :200].transpose(0, 2, 1))
    with pytest.raises(ValueError, match="need at least 31 frames"):
        model.apply(variables, x[:, :100])
    bad = x.copy()
    bad[0, 10, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.apply(variables, bad)
    picker = SeisLMPicker(TINY)
    with pytest.raises(ValueError, match="too few for the conv feature encoder"):
        picker.init(jax.random.key(0), x[:, :4])
    with pytest.raises(ValueError, match="head_dropout_rate"):
        SeisLMPicker(TINY, head_dropout_rate=1.0).init(jax.random.key(0), x[:, :400])
