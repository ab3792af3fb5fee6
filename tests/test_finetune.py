"""Fine-tuning end to end: `seisfuse finetune` of each downstream task in the one loop, `seisfuse
evaluate` to metrics.json and figures, `seisfuse pick` on a real record, starting points (an MAE run,
a converted fine-tuned file), freezing labels and the errors a user can cause."""

import json
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import obspy
import pytest

from seisfuse.cli import main
from seisfuse.train.config import load_config
from seisfuse.train.tasks import make_task

pytestmark = pytest.mark.slow  # end to end: the runs fixture fine-tunes all four tasks

QUICK = ["--config.total_steps=2", "--config.optimizer.warmup_steps=1", "--config.wandb.mode=disabled",
         "--config.tensorboard=False", "--config.batch_size=2", "--config.data.num_examples=8",
         "--config.data.eval_examples=4", "--config.checkpoint_every=2", "--config.log_every=1"]
VARIANTS = {"segment": "configs/sfm_finetune.py:facies-tiny",
            "regress": "configs/sfm_finetune.py:denoise-tiny",
            "pick": "configs/seislm_finetune.py:pick-tiny",
            "classify": "configs/seislm_finetune.py:classify-tiny"}
# A real 3-component local event that obspy ships (70 s at 150 Hz).
EVENT = Path(obspy.__file__).parent / "io/seisan/tests/data/2005-07-23-1452-04S.CER___030.mseed"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 2-step fine-tuning run per task, evaluated once."""
    root = tmp_path_factory.mktemp("finetune")
    out = {}
    for task, variant in VARIANTS.items():
        workdir = root / task
        assert main(["finetune", "--config", variant, "--workdir", str(workdir), *QUICK]) == 0
        assert main(["evaluate", str(workdir)]) == 0
        out[task] = workdir
    return out


def _metrics(workdir: Path) -> dict:
    return json.loads((workdir / "eval" / "metrics.json").read_text())


def test_segmentation_run_is_evaluated_with_sfm_metrics_and_figures(runs):
    metrics = _metrics(runs["segment"])
    assert metrics["examples"] == 4 and metrics["step"] == 2
    assert {"PA", "CPA", "MPA", "IoU", "mIoU", "FWIoU", "confusion_matrix"} <= set(metrics)
    assert len(metrics["IoU"]) == 11 and 0.0 <= metrics["PA"] <= 1.0
    cm = np.asarray(metrics["confusion_matrix"])
    assert cm.shape == (11, 11) and cm.sum() == 4 * 224 * 224
    figures = {p.name for p in (runs["segment"] / "eval" / "figures").iterdir()}
    assert {"segmentation_examples.png", "iou_per_class.png", "confusion_matrix.png"} <= figures


def test_denoising_run_reports_mse_psnr_msssim(runs):
    metrics = _metrics(runs["regress"])
    assert {"MSE", "PSNR", "MSSSIM", "SSIM"} <= set(metrics)
    assert np.isfinite(metrics["MSE"]) and metrics["MSE"] > 0
    assert (runs["regress"] / "eval" / "figures" / "regression_examples.png").stat().st_size > 0


def test_picker_run_reports_detection_and_onsets(runs):
    metrics = _metrics(runs["pick"])
    assert {"detection/auc", "P/mae_s", "P/within_0.1s"} <= set(metrics)
    figures = {p.name for p in (runs["pick"] / "eval" / "figures").iterdir()}
    assert "residuals.png" in figures and "picks_0.png" in figures


def test_classifier_run_reports_accuracy_and_confusion(runs):
    metrics = _metrics(runs["classify"])
    assert 0.0 <= metrics["accuracy"] <= 1.0 and len(metrics["f1"]) == 4
    assert np.asarray(metrics["confusion_matrix"]).sum() == 4


def test_evaluate_never_overwrites_and_names_non_finetuning_runs(runs, tmp_path, capsys):
    assert main(["evaluate", str(runs["classify"])]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a seisfuse run" in capsys.readouterr().err


def test_evaluate_on_the_users_records_and_refuses_the_wrong_modality(runs, tmp_path, capsys):
    event = obspy.read(str(EVENT))
    event.resample(100.0)
    event.write(str(tmp_path / "event.mseed"), format="MSEED")
    (tmp_path / "picks.csv").write_text("file,p_time,s_time\nevent.mseed,2005-07-23T14:52:10,\n")
    assert main(["evaluate", str(runs["pick"]), "--data", str(tmp_path / "picks.csv"),
                 "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["examples"] == 1  # the user's record, not the run's synthetic held-out set
    (tmp_path / "sfm" / "seismic").mkdir(parents=True)
    (tmp_path / "sfm" / "seismic" / "1.dat").write_bytes(np.zeros(16, np.float32).tobytes())
    assert main(["evaluate", str(runs["pick"]), "--data", str(tmp_path / "sfm"),
                 "--out", str(tmp_path / "e2")]) == 2
    assert "holds images" in capsys.readouterr().err


def test_pick_writes_a_table_for_a_real_event_and_refuses_a_classifier(runs, tmp_path, capsys):
    table = tmp_path / "picks.csv"
    assert main(["pick", str(EVENT), "--run", str(runs["pick"]), "--out", str(table),
                 "--p-threshold", "0.01", "--s-threshold", "0.01"]) == 0
    header = table.read_text().splitlines()[0]
    assert header == "file,station,phase,time,sample,probability"
    assert "station(s)" in capsys.readouterr().out
    assert main(["pick", str(EVENT), "--run", str(runs["classify"]), "--out", str(tmp_path / "x.csv")]) == 2
    assert "is a 'classify' run" in capsys.readouterr().err


def test_resume_continues_a_finetuning_run_with_its_batchnorm_statistics(runs, tmp_path):
    from seisfuse.eval.evaluate import restore_variables

    _, before, _ = restore_variables(runs["segment"])
    args = ["finetune", "--config", VARIANTS["segment"], "--workdir", str(runs["segment"]), *QUICK]
    assert main(args + ["--resume", "--config.total_steps=3"]) == 0
    _, after, step = restore_variables(runs["segment"])
    assert step == 3
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                                         before, after))
    assert max(moved) > 0  # the running statistics travel through checkpoints and keep updating


def test_wrong_class_count_for_the_labels_is_named(tmp_path, capsys):
    args = ["finetune", "--config", VARIANTS["segment"], "--workdir", str(tmp_path), *QUICK,
            "--config.model.head.num_classes=2"]
    assert main(args) == 2
    assert "labels range over [0," in capsys.readouterr().err


def test_finetuning_starts_from_an_mae_run_of_this_engine(tmp_path):
    mae = tmp_path / "mae"
    assert main(["train", "--config", "configs/mae_pretrain.py:tiny", "--workdir", str(mae), *QUICK[:4],
                 "--config.data.source=random", "--config.batch_size=2", "--config.model.depth=4"]) == 0
    config = load_config(VARIANTS["segment"], [f"init={mae}"])
    task = make_task(config)
    params = jax.tree.map(np.asarray, nn.unbox(task.init_params(jax.random.key(1))))
    from seisfuse.train.checkpoint import restore_params

    pretrained = restore_params(mae / "checkpoints")
    for name in ("blocks_3", "patch_embed", "cls_token", "norm"):
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params["encoder"][name]),
                     jax.tree.map(np.asarray, pretrained[name]))
    # The engine builds its state under eval_shape/jit: the run must be read eagerly all the same.
    assert main(["finetune", "--config", VARIANTS["segment"], "--workdir", str(tmp_path / "ft"), *QUICK,
                 "--init", str(mae)]) == 0
    bad = load_config(VARIANTS["pick"], [f"init={mae}"])
    with pytest.raises(ValueError, match="holds 'mae' weights"):
        make_task(bad).init_params(jax.random.key(0))


def test_converted_finetuned_sfm_file_is_a_starting_point(tmp_path, capsys):
    from seisfuse.convert import export_sfm_finetuned
    from seisfuse.models.mae import MAEConfig
    from seisfuse.models.sfm_heads import SFMSegmenter

    cfg = MAEConfig.preset("tiny", depth=4, decoder=False, learned_pos_embed=True)
    model = SFMSegmenter(cfg, num_classes=11, head_channels=32)
    variables = model.init(jax.random.key(3), np.zeros((1, 224, 224, 1), np.float32))
    export_sfm_finetuned(model, variables, tmp_path / "facies.pth")
    assert main(["convert", "sfm", str(tmp_path / "facies.pth"), str(tmp_path / "conv"),
                 "--num-heads", "4"]) == 0
    assert "task: segment" in capsys.readouterr().out
    config = load_config(VARIANTS["segment"], [f"init={tmp_path / 'conv'}"])
    task = make_task(config)
    params = task.init_params(jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(jax.tree.leaves(params["decoder"])[0]),
                                  np.asarray(jax.tree.leaves(variables["params"]["decoder"])[0]))
    wrong = load_config(VARIANTS["segment"], [f"init={tmp_path / 'conv'}", "model.head.num_classes=6"])
    with pytest.raises(ValueError, match="do not fit this model"):
        make_task(wrong).init_params(jax.random.key(0))


def test_freezing_options_become_optimizer_labels():
    frozen = make_task(load_config(VARIANTS["segment"], ["model.freeze=encoder"]))
    params = nn.unbox(jax.eval_shape(frozen.init_params, jax.random.key(0)))
    labels = frozen.param_labels(params)
    assert set(jax.tree.leaves(labels["encoder"])) == {"frozen"}
    assert set(jax.tree.leaves(labels["head"])) == {"frozen"}  # never read by the forward
    assert "decay" in jax.tree.leaves(labels["decoder"])
    picker = make_task(load_config(VARIANTS["pick"], ["model.freeze=feature_encoder",
                                                       "optimizer.unfreeze_step=100"]))
    labels = picker.param_labels(nn.unbox(jax.eval_shape(picker.init_params, jax.random.key(0))))
    assert set(jax.tree.leaves(labels["wav2vec2"]["feature_extractor"])) == {"frozen"}
    assert set(jax.tree.leaves(labels["wav2vec2"]["encoder"])) <= {"decay:delayed", "no_decay:delayed"}
    assert not any(":delayed" in label for label in jax.tree.leaves(labels["double_conv"]))
