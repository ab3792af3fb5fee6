"""`seisfuse view`: the data each report section collects, the page it writes (escaped, sortable,
with its numbers embedded), the errors a user can cause, a real tiny fine-tuning run end to end
(the command recorded by the CLI, curves from its TensorBoard events, a partial run), and a real
headless Chromium that renders the pages without console errors and with every section visible."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from seisfuse.cli import main
from seisfuse.eval import view as V

# ====================================================================== collected data (pure)


def test_segmentation_examples_score_each_example_and_sum_the_confusion():
    labels = np.zeros((2, 4, 4), np.int64)
    labels[:, :, 2:] = 1
    logits = np.zeros((2, 4, 4, 2))
    logits[0, ..., 1] = labels[0]  # example 0: perfect
    logits[1, :, :, 1] = 1.0  # example 1: everything class 1 -> half the pixels wrong
    data = V.segmentation_examples(np.zeros((2, 4, 4, 1)), labels, logits, 2)
    np.testing.assert_allclose(data["PA"], [1.0, 0.5])
    np.testing.assert_allclose(data["mIoU"], [1.0, (0.0 + 0.5) / 2])
    assert data["confusion"].tolist() == [[8, 8], [0, 16]]
    assert data["error"][1].sum() == 8 and not data["error"][0].any()
    assert data["loss"][0] < data["loss"][1]
    assert V._worst_first(data["mIoU"], higher_is_worse=False).tolist() == [1, 0]


def test_regression_examples_are_scored_one_by_one():
    rng = np.random.default_rng(0)
    target = rng.uniform(0.2, 0.8, (2, 32, 32, 1)).astype(np.float32)
    estimate = target + np.stack([np.full((32, 32, 1), 0.01), np.full((32, 32, 1), 0.1)]).astype(np.float32)
    data = V.regression_examples(target, target, estimate)
    np.testing.assert_allclose(data["MSE"], [1e-4, 1e-2], rtol=1e-3)
    assert data["PSNR"][0] > data["PSNR"][1]
    np.testing.assert_allclose(data["error"], estimate - target)
    assert V._worst_first(data["PSNR"], higher_is_worse=False)[0] == 1


def test_pick_examples_residuals_in_seconds_and_nan_without_a_true_pick():
    probs = np.zeros((2, 3001, 3), np.float32)
    probs[0, 500, 0], probs[0, 900, 1] = 0.9, 0.8
    probs[1, 1000, 0], probs[1, 2000, 1] = 0.7, 0.6
    data = V.pick_examples(np.ones((2, 3001, 3)), probs, np.array([510.0, 1000.0]),
                           np.array([850.0, np.nan]), 100.0)
    np.testing.assert_allclose(data["residual"][0], [-0.1, 0.5])
    assert data["residual"][1, 0] == 0.0 and np.isnan(data["residual"][1, 1])
    np.testing.assert_allclose(data["worst"], [0.5, 0.0])
    np.testing.assert_allclose(data["peak"], [[0.9, 0.8], [0.7, 0.6]])


def test_classification_examples_probability_of_the_true_class():
    logits = np.array([[4.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 2.0, 0.0]])
    data = V.classification_examples(np.zeros((3, 10, 3)), logits, np.array([0, 1, 1]), 3)
    assert data["pred"].tolist() == [0, 2, 1] and data["correct"].tolist() == [True, False, True]
    np.testing.assert_allclose(data["p_true"][1], 1 / (2 + np.exp(3)))
    assert data["confusion"][1].tolist() == [0, 1, 1] and data["overall"]["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_examples_masked_input_and_loss_on_the_removed_patches(norm_pix):
    from seisfuse.models.mae import patchify

    rng = np.random.default_rng(1)
    images = rng.standard_normal((2, 32, 32, 1)).astype(np.float32)
    target = np.asarray(patchify(images, 16))
    if norm_pix:
        scale = np.sqrt(target.var(-1, keepdims=True, ddof=1) + 1e-6)
        target = (target - target.mean(-1, keepdims=True)) / scale
    mask = np.array([[1, 0, 0, 1], [0, 1, 1, 1]], np.float32)
    pred = target.copy()
    pred[1, 0] += 5.0  # wrong only on a visible patch: not counted
    pred[0, 3] += 1.0  # wrong by 1 on one of two removed patches
    data = V.mae_examples(images, pred, mask, 16, norm_pix)
    np.testing.assert_allclose(data["loss"], [0.5, 0.0], atol=1e-5)
    assert np.isnan(data["masked"][0, :16, :16]).all() and not np.isnan(data["masked"][0, :16, 16:]).any()
    np.testing.assert_allclose(np.isnan(data["masked"]).mean(axis=(1, 2, 3)), mask.mean(1))
    if norm_pix:
        np.testing.assert_allclose(data["target"][0, :16, :16].mean(), 0.0, atol=1e-5)
    else:
        np.testing.assert_allclose(data["target"], images, atol=1e-6)


def test_alignment_data_ranks_recall_and_maps():
    rng = np.random.default_rng(2)
    image = rng.standard_normal((8, 6))
    data = V.alignment_data({"image": image, "waveform": image + 0.01 * rng.standard_normal((8, 6))}, k=3)
    assert data["wav2img_rank"].tolist() == [1] * 8 and data["img2wav_rank"].tolist() == [1] * 8
    assert data["recall"]["trained/wav2img/R@1"] == 1.0 and data["recall"]["chance/R@1"] == 1 / 8
    assert data["top"].shape == (8, 3) and (data["top"][:, 0] == np.arange(8)).all()
    assert data["pca"].shape == data["tsne"].shape == (16, 2)
    assert V.alignment_data({"image": image[:4], "waveform": image[:4]})["tsne"] is None


def test_experiment_table_mean_and_student_t_interval_over_seeds(tmp_path):
    from scipy import stats

    records = [{"task": "facies", "arm": arm, "seed": seed, "metric": "mIoU", "value": value}
               for arm, values in (("scratch", [0.5, 0.6, 0.7]), ("aligned", [0.8, None]))
               for seed, value in enumerate(values)]
    (tmp_path / "results.json").write_text(json.dumps({"records": records}))
    rows = {r["arm"]: r for r in V.experiment_table(V.read_results(tmp_path))}
    low, high = stats.t.interval(0.95, 2, loc=0.6, scale=np.std([0.5, 0.6, 0.7], ddof=1) / np.sqrt(3))
    assert rows["scratch"]["seeds"] == 3 and rows["scratch"]["mean"] == pytest.approx(0.6)
    assert (rows["scratch"]["ci_low"], rows["scratch"]["ci_high"]) == pytest.approx((low, high))
    assert rows["aligned"]["seeds"] == 1 and rows["aligned"]["failed"] == 1
    assert np.isnan(rows["aligned"]["ci_low"])  # one seed: no interval, never a zero-width one
    (tmp_path / "results.json").write_text(json.dumps([{**records[0], "seed": "0"}]))
    with pytest.raises(ValueError, match="record 0"):
        V.read_results(tmp_path)


def _write_events(folder: Path, points: list[tuple[int, float]], part: int) -> None:
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(folder), filename_suffix=f".{part}")  # one file per (re)start
    for step, value in points:
        writer.add_scalar("loss", value, step)
    writer.close()


def test_read_scalars_keeps_what_a_killed_run_wrote_and_a_resumes_last_value(tmp_path):
    _write_events(tmp_path / "tensorboard", [(1, 3.0), (2, 2.0), (3, 1.5)], 0)
    assert V.read_scalars(tmp_path) == ({"loss": [(1, 3.0), (2, 2.0), (3, 1.5)]}, [])
    first = next((tmp_path / "tensorboard").iterdir())
    first.write_bytes(first.read_bytes()[:-7])  # killed while writing the last record
    scalars, notes = V.read_scalars(tmp_path)
    assert scalars == {"loss": [(1, 3.0), (2, 2.0)]} and "ends inside a record" in notes[0]
    _write_events(tmp_path / "tensorboard", [(2, 2.5), (3, 1.0)], 1)  # resumed from step 1
    assert V.read_scalars(tmp_path)[0] == {"loss": [(1, 3.0), (2, 2.5), (3, 1.0)]}


def test_command_record_fresh_for_a_new_run_appended_on_resume_only(tmp_path):
    V.record_command(tmp_path, ["train", "--config", "a"])  # failed before training...
    V.record_command(tmp_path, ["train", "--config", "b"])  # ...so the run is made by this one
    (tmp_path / "checkpoints" / "10").mkdir(parents=True)
    V.record_command(tmp_path, ["train", "--config", "c"])  # refused by train: not recorded
    V.record_command(tmp_path, ["train", "--config", "b", "--resume"], resume=True)
    commands = V.read_commands(tmp_path)
    assert [c["argv"][-1] for c in commands] == ["b", "--resume"]
    assert commands[0]["versions"]["jax"] and commands[0]["argv"][0] == "seisfuse"


# ====================================================================== pages from sections


def _task(**fields):
    return SimpleNamespace(**fields)


def _all_sections(tmp_path: Path) -> V.Report:
    """Every model section (on made-up model outputs, no checkpoint) and an experiment section."""
    rng = np.random.default_rng(3)
    images = rng.standard_normal((3, 32, 32, 1)).astype(np.float32)
    labels = (np.arange(32)[None, :, None] // 11 + np.zeros((3, 32, 32), int))
    note = "made-up outputs"
    sections = []
    mae = _task(cfg=_task(patch_size=16, norm_pix_loss=False), mask_ratio=0.5)
    from seisfuse.models.mae import patchify

    pred = np.asarray(patchify(images, 16)) + 0.3 * rng.standard_normal((3, 4, 256)).astype(np.float32)
    mask = np.array([[1, 0, 1, 0]] * 3, np.float32)
    sections.append(V.mae_section({"batch": {"image": images}, "pred": pred, "mask": mask, "note": note,
                                   "task": mae}, 3)[0])
    logits = rng.standard_normal((3, 32, 32, 3)) + 3 * np.eye(3)[labels]
    sections.append(V.segmentation_section({"batch": {"image": images, "label": labels}, "output": logits,
                                            "note": note, "task": _task(num_classes=3)}, 3)[0])
    sections.append(V.regression_section({"batch": {"image": images, "target": images},
                                          "output": images + 0.1, "note": note,
                                          "task": _task(estimate=lambda out, batch: out)}, 3)[0])
    t = np.arange(3001)
    probs = np.stack([np.exp(-0.5 * ((t - c) / 20.0) ** 2) for c in (800, 1300, 0)], -1)[None].repeat(2, 0)
    waveforms = rng.standard_normal((2, 3001, 3)).astype(np.float32)
    sections.append(V.pick_section({"batch": {"waveform": waveforms, "p_sample": np.array([810.0, 700.0]),
                                              "s_sample": np.array([1300.0, np.nan])},
                                    "output": probs, "note": note}, 2)[0])
    sections.append(V.classification_section({"batch": {"waveform": waveforms, "label": np.array([0, 2])},
                                              "output": np.array([[2.0, 0, 0, 0], [0, 1.0, 0, 0]]),
                                              "note": note, "task": _task(num_classes=4)}, 2)[0])
    image_emb = rng.standard_normal((6, 8))
    sections.append(V.alignment_section({"embeddings": {"image": image_emb, "waveform": image_emb
                                                        + 0.5 * rng.standard_normal((6, 8))},
                                         "batch": {"image": rng.standard_normal((6, 32, 32, 1)),
                                                   "waveform": rng.standard_normal((6, 160, 3)),
                                                   "p_sample": np.full(6, 10), "s_sample": np.arange(6) + 50},
                                         "note": note}, 6)[0])
    records = [{"task": "facies", "arm": arm, "seed": s, "metric": "mIoU", "value": 0.5 + 0.1 * s + bonus}
               for arm, bonus in (("a", 0.0), ("b", 0.2)) for s in range(3)]
    (tmp_path / "results.json").write_text(json.dumps(records))
    (tmp_path / "summary.md").write_text("# summary\n</script><script>window.hacked = 1</script>\n")
    sections.append(V.experiment_section(V.inspect_run(tmp_path)))
    return V.Report("every section", ["made-up model outputs"], sections)


@pytest.fixture(scope="module")
def all_sections_page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sections")
    page = folder / "report.html"
    page.write_text(V.render_html(_all_sections(folder)))
    return page


def _embedded(page: Path) -> dict:
    text = page.read_text()
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    return json.loads(match.group(1))


def test_page_embeds_each_sections_numbers_and_escapes_hostile_text(all_sections_page):
    text = all_sections_page.read_text()
    data = _embedded(all_sections_page)
    assert list(data["sections"]) == ["mae", "segmentation", "regression", "picking", "classification",
                                      "alignment", "experiment"]
    assert len(data["sections"]["segmentation"]["mIoU"]) == 3
    assert data["sections"]["picking"]["residual"][1][1] is None  # NaN as JSON null
    assert "<script>window.hacked" not in text and "&lt;script&gt;window.hacked" in text
    assert text.count("<img ") >= 3 + 3 + 3 + 2 + 2 + 6 + 1
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text  # offline


# ====================================================================== bad input


def test_a_folder_that_is_not_a_run_gets_one_line(tmp_path, capsys):
    assert main(["view", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is not a seisfuse run" in err and "config.json" in err


def test_a_run_without_checkpoints_gets_one_line(tmp_path, capsys):
    from seisfuse.train.config import loop_defaults, save_run_config

    config = loop_defaults()
    config.task = "segment"
    save_run_config(tmp_path, config)
    assert main(["view", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "has no checkpoints" in err and "checkpoints/<step>" in err


def test_out_must_be_an_html_page_and_n_positive(tmp_path, capsys):
    assert main(["view", str(tmp_path), "--out", str(tmp_path / "config.json")]) == 2
    assert "ending in .html" in capsys.readouterr().err
    assert main(["view", str(tmp_path), "--n", "0"]) == 2
    assert "--n must be" in capsys.readouterr().err


# ====================================================================== a real tiny run


QUICK = ["--config.total_steps=2", "--config.optimizer.warmup_steps=1", "--config.wandb.mode=disabled",
         "--config.batch_size=2", "--config.data.num_examples=8", "--config.data.eval_examples=4",
         "--config.log_every=1", "--config.tensorboard=True"]


@pytest.fixture(scope="module")
def segment_run(tmp_path_factory):
    """A 2-step facies-tiny fine-tuning run with TensorBoard on, viewed once."""
    workdir = tmp_path_factory.mktemp("view") / "facies"
    argv = ["finetune", "--config", "sfm_finetune:facies-tiny", "--workdir", str(workdir), *QUICK]
    assert main(argv) == 0
    assert main(["view", str(workdir), "--n", "3"]) == 0
    return workdir


def test_view_of_a_finetuning_run_shows_the_model_its_curves_and_its_command(segment_run):
    page = segment_run / "report.html"
    data = _embedded(page)
    assert list(data["sections"]) == ["segmentation", "metrics", "curves", "run"]
    segmentation = data["sections"]["segmentation"]
    assert len(segmentation["mIoU"]) == 3 and np.asarray(segmentation["confusion"]).sum() == 3 * 224 * 224
    assert [step for step, _ in data["sections"]["curves"]["scalars"]["loss"]] == [1, 2]
    command = data["sections"]["run"]["commands"][0]["argv"]
    assert command[:2] == ["seisfuse", "finetune"] and "--config.tensorboard=True" in command
    assert data["sections"]["run"]["config"]["task"] == "segment"
    assert "model restored from the checkpoint at step 2 of 2" in page.read_text()


def test_data_of_the_wrong_modality_gets_one_line(segment_run, tmp_path, capsys):
    table = tmp_path / "picks.csv"
    table.write_text("file,p_time,s_time\nrecord.mseed,1.0,2.0\n")
    assert main(["view", str(segment_run), "--data", str(table), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds waveforms" in err and "reads seismic images" in err


def test_view_on_other_data_of_the_runs_modality(segment_run, tmp_path):
    root = tmp_path / "facies"  # SFM's facies task layout: seismic/<i>.dat, label/<i>.dat (classes 1..6)
    rng = np.random.default_rng(4)
    for i in range(2):
        for folder, array in (("seismic", rng.standard_normal((224, 224))),
                              ("label", np.repeat(np.arange(1, 7), 224 * 224 // 6 + 1)[:224 * 224])):
            (root / folder).mkdir(parents=True, exist_ok=True)
            array.astype("<f4").tofile(root / folder / f"{i}.dat")
    out = tmp_path / "other.html"
    assert main(["view", str(segment_run), "--data", str(root), "--data.size=224", "--data.train_count=0",
                 "--n", "2", "--out", str(out)]) == 0
    confusion = np.asarray(_embedded(out)["sections"]["segmentation"]["confusion"])
    assert confusion.sum() == 2 * 224 * 224 and confusion[6:].sum() == 0  # the folder's 6 classes, 0-based
    assert f"of the dat source ({root})" in out.read_text()


def test_a_partial_run_gets_a_report_of_what_exists(segment_run, tmp_path):
    partial = tmp_path / "killed"
    shutil.copytree(segment_run, partial)
    shutil.rmtree(partial / "checkpoints")  # killed before its first checkpoint
    config = json.loads((partial / "config.json").read_text())
    (partial / "config.json").write_text(json.dumps({**config, "total_steps": 50}))
    events = next((partial / "tensorboard").iterdir())
    events.write_bytes(events.read_bytes()[:-5])  # ...while writing an event
    info = V.inspect_run(partial)
    assert info.partial and info.step is None
    out = V.view_run(partial, out=tmp_path / "partial.html")
    data = _embedded(out)
    assert list(data["sections"]) == ["metrics", "curves", "run"]
    assert data["sections"]["curves"]["scalars"]["loss"][0][0] == 1
    assert "no checkpoint yet (of 50 steps)" in out.read_text()
    assert "ends inside a record" in out.read_text()


# ====================================================================== a real browser


CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
# Installed in the page copy the test inspects (never in a report): records script errors, console
# errors and warnings, and where every section and image lies on the page once it has loaded.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push("error: " + e.message); });
window.addEventListener("unhandledrejection", function (e) {
  window.__errors.push("rejection: " + e.reason); });
["error", "warn"].forEach(function (level) {
  var original = console[level];
  console[level] = function () { window.__errors.push(level + ": " + Array.from(arguments).join(" "));
                                 original.apply(console, arguments); };
});
function box(node) { var r = node.getBoundingClientRect();
                     return [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]; }
window.addEventListener("load", function () {
  var sections = Array.from(document.querySelectorAll("section.report-section")).map(function (s) {
    return {id: s.id, box: box(s), images: Array.from(s.querySelectorAll("img")).map(function (img) {
      return {box: box(img), loaded: img.complete && img.naturalWidth > 0}; })};
  });
  document.documentElement.setAttribute("data-probe", JSON.stringify(
    {errors: window.__errors, sections: sections, height: document.documentElement.scrollHeight}));
});
</script>"""
WIDTH = 1280


def _chromium(*args: str) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--enable-logging=stderr", "--v=0", f"--window-size={WIDTH},{args[0]}", *args[1:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def _probe(page: Path, extra_script: str = "") -> dict:
    """Load a copy of `page` with PROBE installed first; what it recorded."""
    probed = page.with_name(f"probed-{page.name}")
    probed.write_text(page.read_text().replace("<head>", f"<head>{PROBE}", 1)
                      .replace("</body>", f"{extra_script}</body>", 1))
    done = _chromium("1000", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    match = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert match, f"the page never finished loading:\n{done.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(match.group(1)))


def _screenshot_regions(page: Path) -> tuple[dict, np.ndarray]:
    from PIL import Image

    probe = _probe(page)
    assert probe["errors"] == [], probe["errors"]
    shot = page.with_suffix(".png")
    done = _chromium(str(probe["height"]), f"--screenshot={shot}", page.as_uri())
    assert "Uncaught" not in done.stderr, done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), np.float64)
    assert pixels.shape == (probe["height"], WIDTH)
    return probe, pixels


def _crop(pixels: np.ndarray, box: list[float]) -> np.ndarray:
    left, top, width, height = (int(round(v)) for v in box)
    return pixels[top:top + height, left:left + width]


def _check_every_section_rendered(page: Path, expected: list[str]) -> None:
    probe, pixels = _screenshot_regions(page)
    assert [s["id"] for s in probe["sections"]] == expected
    for section in probe["sections"]:
        region = _crop(pixels, section["box"])
        assert region.size and region.std() > 10, f"section {section['id']} is blank in the screenshot"
        for image in section["images"]:
            assert image["loaded"], f"an image of section {section['id']} does not decode"
            shown = _crop(pixels, image["box"])
            assert shown.size and shown.std() > 10 and shown.min() < 200, \
                f"an image of section {section['id']} is blank in the screenshot"


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium: the browser test needs Debian's `chromium` package (.ci/run installs it "
                    "with apt-get where it can); install it to run this test")
    return CHROMIUM


def test_browser_renders_every_section_of_a_tiny_runs_report(browser, segment_run):
    _check_every_section_rendered(segment_run / "report.html", ["segmentation", "metrics", "curves", "run"])


def test_browser_renders_every_kind_of_section(browser, all_sections_page):
    _check_every_section_rendered(all_sections_page, ["mae", "segmentation", "regression", "picking",
                                                      "classification", "alignment", "experiment"])


def test_browser_probe_catches_script_errors_and_the_tables_sort(browser, all_sections_page):
    broken = _probe(all_sections_page, "<script>undefinedFunction();</script>")
    assert any("undefinedFunction" in e for e in broken["errors"])  # the check can fail
    sort = """<script>window.addEventListener("load", function () {
      var th = document.querySelector("#classification-examples thead th:nth-child(4)");
      th.click(); th.click();
      document.documentElement.setAttribute("data-order", Array.from(
        document.querySelectorAll("#classification-examples tbody tr")).map(function (r) {
          return r.cells[0].textContent; }).join(","));
    });</script>"""
    probed = all_sections_page.with_name("sort.html")
    probed.write_text(all_sections_page.read_text().replace("</body>", f"{sort}</body>", 1))
    done = _chromium("1000", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    table = all_sections_page.read_text().split('id="classification-examples"')[1].split("</table>")[0]
    before = re.findall(r"<tr><td data-v=\"[^\"]+\">(\d+)</td>", table)
    after = re.search(r'data-order="([^"]*)"', done.stdout).group(1).split(",")
    assert before == ["1", "0"]  # least confident first
    assert after == ["0", "1"]  # sorted by p(true), descending after the second click
