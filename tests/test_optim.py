"""One MAE pretraining step with our AdamW equals the original (torch AdamW, timm's param groups)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from seisfuse.convert import load_sfm
from seisfuse.convert.sfm import params_to_state_dict
from seisfuse.models.mae import MAEConfig, MaskedAutoencoder
from seisfuse.testing.mae_torch import build_reference, save_like_sfm
from seisfuse.train.optim import mae_adamw, mae_param_labels

# Large lr and decay: a wrong decay group (lr·wd·|p| ~ 5e-4) or a moved position table (~lr) shows far
# above the tolerance. Adam divides each gradient by its own magnitude, so rounding noise on gradients
# that are zero in exact arithmetic (attention key biases) would move params by ~lr in either
# framework; a large eps (both sides) keeps such steps tiny while real gradients still move params.
LR, WD, EPS = 1e-2, 0.5, 1e-3
TOL = 1e-5


@pytest.mark.slow
def test_two_adamw_steps_match_torch(tmp_path):
    cfg = MAEConfig.preset("tiny", img_size=64)
    ref = build_reference(cfg, seed=4)
    path = tmp_path / "ck.pth"
    save_like_sfm(ref, path)
    _, params = load_sfm(path)
    before = {k: v.numpy().copy() for k, v in ref.state_dict().items()}

    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 1, 64, 64)).astype(np.float32)
    noise = rng.random((2, cfg.num_patches)).astype(np.float32)

    trainable = [(n, p) for n, p in ref.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": [p for n, p in trainable if p.ndim > 1 and not n.endswith(".bias")], "weight_decay": WD},
         {"params": [p for n, p in trainable if p.ndim <= 1 or n.endswith(".bias")], "weight_decay": 0.0}],
        lr=LR, betas=(0.9, 0.95), eps=EPS)
    for _ in range(2):
        opt.zero_grad()
        ref(torch.from_numpy(images), 0.75, torch.from_numpy(noise))[0].backward()
        opt.step()

    model = MaskedAutoencoder(cfg)
    tx = mae_adamw(LR, params, weight_decay=WD, eps=EPS)
    opt_state = tx.init(params)
    x, z = jnp.asarray(images.transpose(0, 2, 3, 1)), jnp.asarray(noise)
    for _ in range(2):
        grads = jax.grad(lambda p: model.apply({"params": p}, x, noise=z)[0])(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = jax.tree.map(jnp.add, params, updates)

    ours = params_to_state_dict(jax.tree.map(np.asarray, params), cfg)
    moved = 0.0
    for key, value in ref.state_dict().items():
        np.testing.assert_allclose(ours[key], value.numpy(), atol=TOL, rtol=0, err_msg=key)
        moved = max(moved, float(np.abs(ours[key] - before[key]).max()))
    assert moved > 100 * TOL, "the two steps must move the parameters well beyond the tolerance"


def test_labels_follow_timm_groups():
    model = MaskedAutoencoder(MAEConfig.preset("tiny"))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 1)),
                                               noise=jnp.zeros((1, 196))))["params"]
    labels = mae_param_labels(jax.tree.map(lambda b: b.value, shapes, is_leaf=lambda x: hasattr(x, "value")))
    assert labels["pos_embed"] == labels["decoder_pos_embed"] == "frozen"
    assert labels["cls_token"] == labels["mask_token"] == "decay"
    assert labels["blocks_0"]["attn"]["query"] == {"kernel": "decay", "bias": "no_decay"}
    assert labels["norm"] == {"scale": "no_decay", "bias": "no_decay"}
