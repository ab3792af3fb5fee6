"""The `seisfuse` command as a user runs it."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from flax.traverse_util import flatten_dict

from seisfuse.cli import main
from seisfuse.convert import load_converted, load_sfm
from seisfuse.models.mae import MAEConfig
from seisfuse.testing.mae_torch import build_reference, save_like_sfm


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "seisfuse.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "convert" in out


def test_convert_sfm_writes_a_directory_that_loads_back_identical(tmp_path, capsys):
    src = tmp_path / "sfm.pth"
    save_like_sfm(build_reference(MAEConfig.preset("tiny")), src)
    out_dir = tmp_path / "converted"
    assert main(["convert", "sfm", str(src), str(out_dir)]) == 0
    kind, config, params = load_converted(out_dir)
    assert kind == "sfm" and MAEConfig.from_dict(config) == MAEConfig.preset("tiny")
    _, expected = load_sfm(src)
    flat = flatten_dict(params, sep="/")
    for path, value in flatten_dict(expected, sep="/").items():
        np.testing.assert_array_equal(flat[path], np.asarray(value), err_msg=path)
    assert main(["convert", "sfm", str(src), str(out_dir)]) == 2, "never overwrite converted params"
    assert "already exists" in capsys.readouterr().err


def test_convert_into_an_unwritable_place_fails_before_reading(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["convert", "sfm", str(tmp_path / "missing.pth"), str(blocker / "out")]) == 2
    assert "cannot write" in capsys.readouterr().err  # named before the (missing) input is read


def test_convert_reports_a_corrupt_file(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert main(["convert", "sfm", str(bad), str(tmp_path / "out")]) == 2
    assert "not a PyTorch zip checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out" / "params").exists()



def test_convert_seislm_lightning_checkpoint(tmp_path):
    from seisfuse.convert import load_seislm
    from seisfuse.models.wav2vec2 import Wav2Vec2Config
    from seisfuse.testing.wav2vec2_torch import build, ref_config, save_lightning_checkpoint

    cfg = Wav2Vec2Config.preset("tiny")
    src = tmp_path / "seislm.ckpt"
    save_lightning_checkpoint(build(ref_config(cfg)), src)
    out_dir = tmp_path / "converted"
    assert main(["convert", "seislm", str(src), str(out_dir)]) == 0
    kind, config, params = load_converted(out_dir)
    assert kind == "seislm" and Wav2Vec2Config.from_dict(config).hidden_size == cfg.hidden_size
    _, expected = load_seislm(src)
    flat = flatten_dict(params, sep="/")
    for path, value in flatten_dict(expected, sep="/").items():
        np.testing.assert_array_equal(flat[path], np.asarray(value), err_msg=path)


def test_config_named_either_way_or_misnamed(tmp_path, capsys, monkeypatch):
    """The packaged configs by name (any install) or by path (a checkout); `finetune` reads them,
    then refuses a pretraining config (before anything is built or written)."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    for spec in ("mae_pretrain:tiny", "configs/mae_pretrain.py:tiny"):
        assert main(["finetune", "--config", spec, "--workdir", str(tmp_path)]) == 2
        assert "is a 'mae' config" in capsys.readouterr().err
    assert main(["train", "--config", "mea_pretrain:tiny", "--workdir", str(tmp_path)]) == 2
    assert "unknown config 'mea_pretrain'" in capsys.readouterr().err
