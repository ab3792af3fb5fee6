"""SeisLM parity: the Flax port against the plain-PyTorch reference (original key names), float32.

Every reference is saved as the original project saves it (Lightning .ckpt with a pickled
ml_collections config, or a plain state_dict), converted with `load_seislm`, and compared on the
same waveforms, masks and negatives. Tensors: max |diff| <= 1e-5. Losses are sums over ~370-750
masked frames of magnitude 1e3, below float32 resolution at 1e-5, so they are compared per masked
frame (what training logs) at 1e-5 and as sums at 1e-5 relative; perplexity likewise relative.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from seisfuse import masking
from seisfuse.convert.seislm import load_seislm
from seisfuse.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2ForPreTraining
from seisfuse.testing import wav2vec2_torch as ref

T = 3001
ATOL = 1e-5


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def assert_scalar(a, b, what: str) -> None:
    a, b = float(a), float(b)
    assert abs(a - b) <= ATOL * max(1.0, abs(b)), f"{what}: {a} vs {b}"


class Case:
    """A reference model, its converted twin, and one batch of inputs with masks and negatives."""

    def __init__(self, cfg: Wav2Vec2Config, batch: int, path, seed: int = 0, legacy: bool = False,
                 plain: bool = False):
        self.torch_model = ref.build(ref.ref_config(cfg), seed)
        if plain:
            state = self.torch_model.state_dict()
            torch.save(ref.legacy_weight_norm_names(state) if legacy else state, path)
        else:
            ref.save_lightning_checkpoint(self.torch_model, path, weight_norm_legacy=legacy)
        self.cfg, self.params = load_seislm(path)
        assert self.cfg == cfg
        self.model = Wav2Vec2ForPreTraining(cfg)
        self.apply = jax.jit(self.model.apply, static_argnames=("method", "train"))
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((batch, T, cfg.input_channels)).astype(np.float32)
        frames = cfg.frames(T)
        self.mask, self.negatives = masking.pretraining_masks(
            rng, batch, frames, mask_prob=cfg.mask_time_prob, mask_length=cfg.mask_time_length,
            min_masks=cfg.mask_time_min_masks, num_negatives=cfg.num_negatives)

    def torch_inputs(self):
        return (torch.from_numpy(self.x).transpose(1, 2), torch.from_numpy(self.mask),
                torch.from_numpy(self.negatives))

    def jax_outputs(self, params=None, **kwargs):
        params = self.params if params is None else params
        return self.apply({"params": params}, self.x, mask_time_indices=self.mask,
                          sampled_negative_indices=self.negatives, **kwargs)

    def torch_outputs(self, **kwargs):
        with torch.no_grad():
            return self.torch_model(*self.torch_inputs(), **kwargs)


@pytest.fixture(scope="module", params=["tiny", "seislm-base"])
def case(request, tmp_path_factory) -> Case:
    batch = 2 if request.param == "tiny" else 1
    return Case(Wav2Vec2Config.preset(request.param), batch,
                tmp_path_factory.mktemp("seislm") / "last.ckpt")


def test_encode_without_mask(case):
    hidden = case.apply({"params": case.params}, case.x, method="encode")
    with torch.no_grad():
        expected, _ = case.torch_model.wav2vec2(torch.from_numpy(case.x).transpose(1, 2))
    assert hidden.shape == (case.x.shape[0], 749, case.cfg.hidden_size)
    assert max_diff(hidden, expected) <= ATOL


def test_encode_with_time_mask(case):
    hidden = case.apply({"params": case.params}, case.x, mask_time_indices=case.mask, method="encode")
    with torch.no_grad():
        x, mask, _ = case.torch_inputs()
        expected, _ = case.torch_model.wav2vec2(x, mask_time_indices=mask)
    assert max_diff(hidden, expected) <= ATOL


def test_pretraining_outputs_and_losses(case):
    out = case.jax_outputs()
    expected = case.torch_outputs()
    for key in ("projected_states", "projected_quantized_states"):
        assert out[key].shape == expected[key].shape
        assert max_diff(out[key], expected[key]) <= ATOL, key
    assert_scalar(out["codevector_perplexity"], expected["codevector_perplexity"], "perplexity")
    masked = float(case.mask.sum())
    for key in ("loss", "contrastive_loss", "diversity_loss"):
        assert_scalar(out[key], expected[key], key)
        assert abs(float(out[key]) - float(expected[key])) / masked <= ATOL, key


def test_perplexity_of_soft_codes_in_training(case):
    """train=True: Gumbel noise picks the codes, but perplexity uses the noiseless softmax."""
    out = case.jax_outputs(train=True, gumbel_temperature=0.7, rngs={"gumbel": jax.random.PRNGKey(3)})
    case.torch_model.train()
    try:
        expected = case.torch_outputs()
    finally:
        case.torch_model.eval()
    assert_scalar(out["codevector_perplexity"], expected["codevector_perplexity"], "perplexity")
    assert max_diff(out["projected_states"], expected["projected_states"]) <= ATOL


def test_negatives_identical_to_the_positive_are_excluded(case):
    """Bias the code choice to 2 codes per group (still input-dependent, with clear margins) so
    that many negatives are identical to their positive."""
    collapsed = jax.tree.map(lambda a: a, case.params)
    proj = dict(collapsed["quantizer"]["weight_proj"])
    gv = case.cfg.num_codevectors
    proj["bias"] = jnp.zeros(gv).at[jnp.array([0, 1, gv // 2, gv // 2 + 1])].set(50.0)
    collapsed["quantizer"] = {**collapsed["quantizer"], "weight_proj": proj}
    proj_t = case.torch_model.quantizer.weight_proj
    saved = {k: v.clone() for k, v in proj_t.state_dict().items()}
    with torch.no_grad():
        proj_t.bias.zero_()
        proj_t.bias[[0, 1, gv // 2, gv // 2 + 1]] = 50.0
    try:
        expected = case.torch_outputs()
    finally:
        proj_t.load_state_dict(saved)
    out = case.jax_outputs(collapsed)
    assert np.isinf(expected["logits"].numpy()).mean() > 0.1  # the case is exercised
    assert_scalar(out["contrastive_loss"], expected["contrastive_loss"], "contrastive")
    assert np.isfinite(float(out["loss"]))


def test_gradients_match_pytorch(tmp_path):
    """Backward parity (tiny, eval-mode quantizer): d(loss / n_masked) for every parameter."""
    case = Case(Wav2Vec2Config.preset("tiny"), 2, tmp_path / "tiny.ckpt", seed=1)
    out = case.torch_model(*case.torch_inputs())
    (out["loss"] / float(case.mask.sum())).backward()
    expected = {k: p.grad for k, p in case.torch_model.named_parameters()}

    def loss(params):
        return case.jax_outputs(params)["loss"] / case.mask.sum()

    grads = jax.jit(jax.grad(loss))(case.params)
    from seisfuse.convert.seislm import params_to_state_dict

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flat = params_to_state_dict(grads, case.cfg)
    for key, g in expected.items():
        reference = np.zeros_like(flat[key]) if g is None else g.numpy()
        scale = max(1.0, float(np.abs(reference).max()))
        assert max_diff(flat[key], reference) <= ATOL * scale, key


@pytest.mark.parametrize("legacy", [False, True])
def test_group_norm_post_ln_layout_from_plain_state_dict(tmp_path, legacy):
    """HF audio layout: 1 channel, GroupNorm first conv, no conv bias, post-LN, unscaled logits."""
    cfg = Wav2Vec2Config.preset("tiny", input_channels=1, conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3),
                                conv_stride=(5, 2, 2), conv_bias=False, feat_extract_norm="group",
                                do_stable_layer_norm=False, scale_quantizer_logits=False)
    # A shape-only file cannot say which strides or pre/post-LN it has: the plain file gets the
    # preset table's defaults, so pass what differs.
    path = tmp_path / "hf.bin"
    case_ckpt = Case(cfg, 2, tmp_path / "hf.ckpt", legacy=legacy)
    torch.save(ref.legacy_weight_norm_names(case_ckpt.torch_model.state_dict()) if legacy
               else case_ckpt.torch_model.state_dict(), path)
    loaded_cfg, params = load_seislm(path, conv_stride=(5, 2, 2))
    assert loaded_cfg == dataclasses.replace(cfg)
    jax.tree.map(np.testing.assert_array_equal, params, case_ckpt.params)
    out = case_ckpt.jax_outputs()
    expected = case_ckpt.torch_outputs()
    for key in ("projected_states", "projected_quantized_states"):
        assert max_diff(out[key], expected[key]) <= ATOL, key
    assert_scalar(out["loss"], expected["loss"], "loss")


def test_padding_attention_mask(tmp_path):
    case = Case(Wav2Vec2Config.preset("tiny"), 2, tmp_path / "tiny.ckpt", seed=2)
    samples = np.ones((2, T), np.int32)
    samples[1, 2200:] = 0
    x = case.x.copy()
    x[1, 2200:] = 0.0
    hidden = case.apply({"params": case.params}, x, attention_mask=samples, method="encode")
    with torch.no_grad():
        expected, _ = case.torch_model.wav2vec2(torch.from_numpy(x).transpose(1, 2),
                                                attention_mask=torch.from_numpy(samples))
    assert max_diff(hidden, expected) <= ATOL
    # The padded frames really were excluded: the valid part matches an unpadded short input.
    valid = case.cfg.frames(2200)
    short = case.apply({"params": case.params}, x[1:, :2200], method="encode")
    assert max_diff(hidden[1, :valid], short[0]) <= ATOL


def test_released_pretraining_attention_quirk(tmp_path):
    """The flag reproduces the collator's frame-level mask: 186 of 749 frames valid."""
    cfg = Wav2Vec2Config.preset("tiny", pretraining_attention_quirk=True)
    case = Case(Wav2Vec2Config.preset("tiny"), 2, tmp_path / "tiny.ckpt", seed=3)
    model = Wav2Vec2ForPreTraining(cfg)
    frames = cfg.frames(T)
    assert cfg.frames(frames) == 186
    out = jax.jit(model.apply)({"params": case.params}, case.x, mask_time_indices=case.mask,
                               sampled_negative_indices=case.negatives)
    with torch.no_grad():
        expected = case.torch_model(*case.torch_inputs(), attention_mask=torch.ones(2, frames))
    assert max_diff(out["projected_states"], expected["projected_states"]) <= ATOL
    assert_scalar(out["loss"], expected["loss"], "loss")
    clean = case.jax_outputs()
    assert max_diff(out["projected_states"], clean["projected_states"]) > 1e-2
