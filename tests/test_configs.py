"""The packaged experiment configs: every variant loads by name and by path and builds its task; the
defaults reach every config and old runs; the configs ship in the wheel and load by name from it."""

import importlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import ml_collections
import pytest

from seisfuse.demo import demo_config
from seisfuse.train.config import (
    load_config,
    loop_defaults,
    packaged_configs,
    read_run_config,
    resume_changes,
    save_run_config,
)
from seisfuse.train.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "align": ["tiny", "base", "large", "tiny-mel", "base-mel", "large-mel"],
    "mae_pretrain": ["tiny", "base", "large"],
    "seislm_pretrain": ["tiny", "base", "large"],
    "sfm_finetune": [f"{name}{size}" for size in ("", "-tiny")
                     for name in ("facies", "salt", "denoise", "reflectivity", "interpolation")],
    "seislm_finetune": [f"{name}{size}" for name in ("pick", "classify") for size in ("", "-tiny")],
}
ALL = [(name, variant) for name, variants in VARIANTS.items() for variant in variants]


def _flat_keys(tree, prefix=""):
    keys = set()
    for key, value in tree.items():
        keys |= _flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return keys


def test_every_packaged_config_is_covered_here():
    assert packaged_configs() == tuple(sorted(VARIANTS))


@pytest.mark.parametrize(("name", "variant"), ALL, ids=[f"{n}:{v}" for n, v in ALL])
def test_variant_loads_by_name_and_path_and_builds_its_task(name, variant):
    config = load_config(f"{name}:{variant}")
    assert config.to_dict() == load_config(f"{ROOT / 'configs' / name}.py:{variant}").to_dict()
    # The file itself starts from the defaults (a reader of any key finds it without load_config).
    module = importlib.import_module(f"seisfuse.configs.{name}")
    assert _flat_keys(loop_defaults().to_dict()) <= _flat_keys(module.get_config(variant).to_dict())
    shapes = jax.eval_shape(make_task(config).init_params, jax.random.key(0))
    assert jax.tree.leaves(shapes)


def test_path_form_from_the_checkout_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert load_config("configs/mae_pretrain.py:tiny", ["total_steps=2"]).total_steps == 2


def test_demo_trains_the_align_tiny_config():
    assert demo_config().to_dict() == load_config("align:tiny").to_dict()


def test_bad_specs_are_refused_with_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"unknown config 'algn'.*align, mae_pretrain"):
        load_config("algn:tiny")
    monkeypatch.chdir(tmp_path)  # no configs/ here, as in a wheel install
    with pytest.raises(FileNotFoundError, match="packaged one loads by name: align:VARIANT"):
        load_config("configs/align.py:tiny")
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        load_config("mae_pretrain:huge")
    (tmp_path / "empty.py").write_text("X = 1\n")
    with pytest.raises(ValueError, match="has no get_config"):
        load_config(str(tmp_path / "empty.py"))


def test_own_config_file_gets_the_defaults_it_leaves_out(tmp_path):
    mine = tmp_path / "mine.py"
    mine.write_text("import ml_collections\n\n"
                    "def get_config(variant='x'):\n"
                    "    return ml_collections.ConfigDict({'task': 'mae', 'model': {'preset': variant},\n"
                    "                                      'data': {'source': 'synthetic'}})\n")
    config = load_config(f"{mine}:tiny", ["data.augment=True"])
    assert config.model.preset == "tiny" and config.model.dtype == "float32"
    assert config.data.source == "synthetic" and config.data.augment is True
    assert config.data.p_window is None and config.optimizer.accumulate == 1


def test_old_run_config_gets_settings_added_since(tmp_path):
    """A config.json written before data.p_window/augment/label_key/num_workers and model.dtype
    were defaults still builds, and resuming it with today's config changes nothing."""
    config = load_config("mae_pretrain:tiny")
    old = config.to_dict()
    for key in ("p_window", "augment", "label_key", "num_workers"):
        old["data"].pop(key, None)
    old["model"].pop("dtype")
    (tmp_path / "config.json").write_text(json.dumps(old))
    restored = read_run_config(tmp_path)
    assert restored.data.p_window is None and restored.data.augment is False
    assert restored.model.dtype == "float32"
    assert resume_changes(tmp_path, config) == {}
    assert resume_changes(tmp_path, ml_collections.ConfigDict(old)) == {}  # a config built the old way
    save_run_config(tmp_path, config)
    assert read_run_config(tmp_path).to_dict() == config.to_dict()


def test_configs_ship_in_the_wheel_and_load_by_name(tmp_path):
    """Build the wheel from a copy of the project, unpack it (what pip does for a pure-Python wheel)
    and, from a folder without configs/, load every packaged config by name."""
    src = tmp_path / "src"
    src.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / item, src / item)
    shutil.copytree(ROOT / "seisfuse", src / "seisfuse", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("seisfuse-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(site)
    assert {f"seisfuse/configs/{n}.py" for n in VARIANTS} <= set(names)
    script = ("import importlib.resources, json, seisfuse\n"
              "from seisfuse.train.config import load_config, packaged_configs\n"
              "files = sorted(p.name for p in importlib.resources.files('seisfuse.configs').iterdir()\n"
              "               if p.name.endswith('.py'))\n"
              "tasks = {n: load_config(n).task for n in packaged_configs()}\n"
              "print(json.dumps({'file': seisfuse.__file__, 'files': files, 'tasks': tasks}))\n")
    run = tmp_path / "elsewhere"
    run.mkdir()
    out = subprocess.run([sys.executable, "-c", script], cwd=run, env={**os.environ, "PYTHONPATH": str(site)},
                         check=True, capture_output=True, text=True)
    found = json.loads(out.stdout)
    assert found["file"].startswith(str(site))
    assert found["files"] == sorted(["__init__.py", *(f"{n}.py" for n in VARIANTS)])
    assert found["tasks"] == {"align": "align", "mae_pretrain": "mae", "seislm_pretrain": "seislm",
                              "sfm_finetune": "segment", "seislm_finetune": "pick"}
