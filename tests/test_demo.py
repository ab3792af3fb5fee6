"""`seisfuse demo` end to end (shortened: few pairs and steps), then `seisfuse embed` and
`seisfuse retrieve` on what it wrote."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seisfuse.cli import main
from seisfuse.data.synthetic import generate_pair

KEYS = [f"{prefix}/{direction}/{metric}" for prefix in ("retrieval", "untrained")
        for direction in ("img2wav", "wav2img")
        for metric in ("R@1", "R@5", "R@10", "mean_rank", "median_rank")]
KEYS += [f"chance/{metric}" for metric in ("R@1", "R@5", "R@10", "mean_rank", "median_rank")]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--out", str(out), "--train-pairs", "48", "--heldout-pairs", "16", "--steps", "3",
                 "--workers", "1"]) == 0
    return out


def test_demo_writes_metrics_figures_checkpoint_and_summary(demo_dir):
    metrics = json.loads((demo_dir / "metrics.json").read_text())
    assert set(KEYS) <= set(metrics)
    assert metrics["chance/R@1"] == 1 / 16 and metrics["chance/R@10"] == 10 / 16
    assert metrics["num_pairs"] == 16 and metrics["train/steps"] == 3 and metrics["train/pairs"] == 48
    for key in KEYS:
        low, high = (1.0, 16.0) if "rank" in key else (0.0, 1.0)
        assert low <= metrics[key] <= high, key
    assert metrics["time/total_s"] >= metrics["time/train_s"] > 0
    for name in ("retrieval_grid", "similarity_matrix", "joint_space"):
        assert (demo_dir / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert (demo_dir / "checkpoints" / "3").is_dir()
    summary = (demo_dir / "summary.txt").read_text()
    assert "chance" in summary and "untrained" in summary
    assert f"{metrics['retrieval/img2wav/R@10']:.3f}" in summary
    assert json.loads((demo_dir / "config.json").read_text())["task"] == "align"
    report = (demo_dir / "report.html").read_text()
    assert 'id="alignment"' in report and "<img" in report  # the demo ends with its one-page report
    assert json.loads((demo_dir / "command.json").read_text())[0]["argv"][1] == "demo"


def test_demo_refuses_to_overwrite_a_run(demo_dir, capsys):
    assert main(["demo", "--out", str(demo_dir), "--steps", "1"]) == 2
    assert "already holds a demo run" in capsys.readouterr().err


def test_embed_and_retrieve_with_the_demo_run(demo_dir, tmp_path, capsys):
    for i in range(3):
        pair = generate_pair(5, i)
        np.save(tmp_path / f"image{i}.npy", pair["image"])
        np.save(tmp_path / f"wave{i}.npy", pair["waveform"])
    (tmp_path / "images").mkdir()
    for i in range(3):
        (tmp_path / f"image{i}.npy").rename(tmp_path / "images" / f"image{i}.npy")
    gallery = tmp_path / "gallery.npy"
    assert main(["embed", str(tmp_path / "images"), "--run", str(demo_dir), "--out", str(gallery)]) == 0
    embeddings = np.load(gallery)
    assert embeddings.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    capsys.readouterr()
    assert main(["retrieve", str(tmp_path / "wave1.npy"), "--gallery", str(gallery), "--run", str(demo_dir),
                 "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("wave1.npy (waveform) -> nearest 2 of 3 image items")
    assert len(lines) == 3 and all("image" in line for line in lines[1:])
    assert main(["embed", str(tmp_path / "wave1.npy"), "--run", str(tmp_path), "--out", str(gallery)]) == 2
    assert "config.json not found" in capsys.readouterr().err
