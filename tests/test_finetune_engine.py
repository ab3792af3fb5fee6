"""The engine pieces fine-tuning relies on: delayed (unfreeze-at-step-N) optimizer groups, run
configs that are validated before they are written, resume checks, one-line CLI errors."""

import json

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seisfuse.cli import main
from seisfuse.train.config import loop_defaults, read_run_config, resume_changes, save_run_config
from seisfuse.train.optim import adamw


def test_delayed_group_is_frozen_then_trains_like_a_fresh_adam():
    params = {"trunk": jnp.ones(3), "head": jnp.ones(3)}
    labels = {"trunk": "no_decay:delayed", "head": "no_decay"}
    tx = adamw(0.1, labels, weight_decay=0.0, delay_steps=2)
    state = tx.init(params)
    grads = {"trunk": jnp.array([1.0, -2.0, 3.0]), "head": jnp.array([1.0, 1.0, 1.0])}
    trunk_updates = []
    for _ in range(4):
        updates, state = tx.update(grads, state, params)
        trunk_updates.append(np.asarray(updates["trunk"]))
    assert np.all(trunk_updates[0] == 0) and np.all(trunk_updates[1] == 0)
    # At unfreezing the group's Adam starts from its own step 1, as requires_grad=True would.
    fresh = optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(0.1))
    expected, _ = fresh.update(grads["trunk"], fresh.init(params["trunk"]))
    np.testing.assert_allclose(trunk_updates[2], expected, rtol=1e-6)


def test_unknown_optimizer_label_is_named():
    with pytest.raises(ValueError, match="unknown optimizer labels"):
        adamw(0.1, {"a": "decay_later"}, weight_decay=0.0)


def _config(**changes):
    c = loop_defaults()
    c.task = "mae"
    c.model = {"preset": "tiny"}
    for key, value in changes.items():
        c[key] = value
    return c


def test_resume_refuses_a_different_recipe_and_records_allowed_changes(tmp_path):
    save_run_config(tmp_path, _config())
    assert resume_changes(tmp_path, _config()) == {}
    with pytest.raises(ValueError, match="model.preset: 'tiny' -> 'base'"):
        resume_changes(tmp_path, _config(model={"preset": "base"}))
    changes = resume_changes(tmp_path, _config(total_steps=500))
    assert changes == {"total_steps": (100, 500)}
    save_run_config(tmp_path, _config(total_steps=500), changes=changes)
    history = [json.loads(line) for line in (tmp_path / "config_history.jsonl").read_text().splitlines()]
    assert history[0]["changes"] == {"total_steps": [100, 500]}
    assert read_run_config(tmp_path).total_steps == 500


def test_old_run_configs_get_new_defaults(tmp_path):
    old = _config().to_dict()
    del old["optimizer"]["unfreeze_step"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert read_run_config(tmp_path).optimizer.unfreeze_step == 0
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="damaged"):
        read_run_config(tmp_path)


def test_unwritable_workdir_fails_before_anything_is_written(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["train", "--config", "configs/mae_pretrain.py:tiny", "--workdir", str(blocker / "run"),
                 "--config.data.source=random"]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_refused_train_leaves_the_run_config_untouched(tmp_path, capsys):
    base = ["--config.total_steps=1", "--config.optimizer.warmup_steps=0", "--config.wandb.mode=disabled",
            "--config.tensorboard=False", "--config.data.source=random", "--config.batch_size=2"]
    args = ["train", "--config", "configs/mae_pretrain.py:tiny", "--workdir", str(tmp_path)]
    assert main(args + base) == 0
    saved = (tmp_path / "config.json").read_text()
    # A second run without --resume is refused and must not rewrite config.json with its recipe.
    assert main(args + base + ["--config.model.img_size=112"]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert (tmp_path / "config.json").read_text() == saved
    # A resume with another recipe is refused too, naming the key, and changes nothing.
    assert main(args + base + ["--config.model.img_size=112", "--resume"]) == 2
    assert "model.img_size" in capsys.readouterr().err
    assert (tmp_path / "config.json").read_text() == saved


def test_resume_into_an_empty_workdir_says_it_starts_fresh(tmp_path, capsys):
    base = ["--config.total_steps=1", "--config.optimizer.warmup_steps=0", "--config.wandb.mode=disabled",
            "--config.tensorboard=False", "--config.data.source=random", "--config.batch_size=2"]
    assert main(["train", "--config", "configs/mae_pretrain.py:tiny", "--workdir", str(tmp_path / "w"),
                 "--resume"] + base) == 0
    assert "starting fresh" in capsys.readouterr().out


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    args = ["train", "--config", "configs/mae_pretrain.py:tiny", "--workdir", str(tmp_path),
            "--config.batch_size=notanumber"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err
    with pytest.raises(TypeError, match="cannot be casted"):  # ml_collections' own, with its traceback
        main(args + ["--debug"])
