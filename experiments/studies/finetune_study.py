"""Does pretraining with this repo's engine help the downstream tasks at CPU scale?

Date: 2026-12-02.
Result: not at this scale. Over 3 seeds, facies mIoU 0.183 ± 0.002 pretrained vs 0.197 ± 0.002 from
scratch (the MAE's loss barely left 1.00 in 1500 CPU steps); denoising PSNR equal (19.72 vs 19.68 dB,
1 seed); picking mixed (P onset MAE 0.062 vs 0.045 s, S 0.035 vs 0.063 s; AIC: P 0.049 s); the
synthetic-trained picker finds no pick in obspy's real event. experiments/RESULTS.md has the table.
Question: on the synthetic generator's labels, does SFM-tiny MAE-pretrained on synthetic images
segment facies and denoise better than SFM-tiny from scratch, and does SeisLM-tiny pretrained
(wav2vec 2.0) on synthetic records pick P and S better than from scratch — and than the classic
AIC picker (`seisfuse.data.picking.pick_p`)? Same fine-tuning recipe (configs/*_finetune.py -tiny),
same steps, same data, same held-out examples for both arms; only `init` differs. Finally the best
picker labels the real 3-C event obspy ships.

    python experiments/studies/finetune_study.py --out runs/finetune-study          # ~CPU tens of minutes
    python experiments/studies/finetune_study.py --out /tmp/s --pretrain-steps 20 --finetune-steps 10  # smoke

Writes OUT/study.json (every run's metrics, steps and seconds) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from seisfuse.data.picking import pick_p
from seisfuse.data.transforms import SAMPLING_RATE
from seisfuse.eval import metrics as M
from seisfuse.eval.evaluate import eval_batches, evaluate_run
from seisfuse.train.config import load_config
from seisfuse.train.loop import train
from seisfuse.train.tasks import make_task

ROOT = Path(__file__).resolve().parents[2]  # the repository

QUIET = ["wandb.mode=disabled", "tensorboard=False"]
TASKS = {"facies": "sfm", "denoise": "sfm", "pick": "seislm"}  # fine-tuning variant: family
EVENT = "io/seisan/tests/data/2005-07-23-1452-04S.CER___030.mseed"  # obspy's real 3-C local event


def run(spec: str, overrides: list[str], workdir: Path) -> float:
    """Train (or fine-tune) one config to the end unless a finished run is there; seconds taken."""
    config = load_config(str(ROOT / spec), [*QUIET, *overrides])
    if (workdir / "checkpoints" / str(config.total_steps)).exists():
        return float(json.loads((workdir / "seconds.json").read_text())["seconds"])
    start = time.perf_counter()
    train(make_task(config), config, workdir)
    seconds = time.perf_counter() - start
    (workdir / "seconds.json").write_text(json.dumps({"seconds": seconds}))
    return seconds


def aic_baseline(workdir: Path) -> dict[str, float]:
    """P onsets of the classic picker on the picker's own held-out windows, as the model's P/ keys."""
    from seisfuse.train.config import read_run_config

    config = read_run_config(workdir)
    task = make_task(config)
    residuals, failed, total = [], 0, 0
    for raw in eval_batches(task, config, None):
        for waveform, p in zip(raw["waveform"], raw["p_sample"], strict=True):
            if not np.isfinite(p):
                continue
            total += 1
            try:
                residuals.append((pick_p(waveform) - float(p)) / SAMPLING_RATE)
            except ValueError:  # no clear arrival: the classic picker abstains
                failed += 1
    return {**{f"P/{k}": v for k, v in M.onset_metrics(np.asarray(residuals)).items()},
            "P/abstained": failed, "P/records": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--train-examples", type=int, default=512)
    parser.add_argument("--eval-examples", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds per arm (default 1)")
    parser.add_argument("--seeded-tasks", nargs="*", default=list(TASKS),
                        help="tasks that get --seeds seeds; the others get one (default: all)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = [f"data.num_examples={args.train_examples}", f"data.eval_examples={args.eval_examples}"]
    results: dict[str, dict] = {}

    # Pretraining with this repo's engine, on generator images (a dataset seed the fine-tuning
    # data do not use) and generator records.
    pre = [f"total_steps={args.pretrain_steps}", "batch_size=16", "data.num_examples=4096",
           "data.dataset_seed=7", "checkpoint_every=500", "log_every=100",
           f"optimizer.warmup_steps={args.pretrain_steps // 10}"]
    seconds = run("configs/mae_pretrain.py:tiny", [*pre, "model.depth=4"], out / "mae")
    results["pretrain/mae"] = {"steps": args.pretrain_steps, "seconds": seconds}
    seconds = run("configs/seislm_pretrain.py:tiny", pre, out / "seislm")
    results["pretrain/seislm"] = {"steps": args.pretrain_steps, "seconds": seconds}

    fine = [f"total_steps={args.finetune_steps}", "checkpoint_every=1000", "log_every=50",
            f"optimizer.warmup_steps={max(args.finetune_steps // 10, 1)}", *data]
    arms = {"sfm": {"scratch": "", "pretrained": str(out / "mae")},
            "seislm": {"scratch": "", "pretrained": str(out / "seislm")}}
    for variant, family in TASKS.items():
        spec = f"configs/{family}_finetune.py:{variant}-tiny"
        seeds = range(args.seeds if variant in args.seeded_tasks else 1)
        for arm, init in arms[family].items():
            for seed in seeds:  # seed 0's folder keeps the plain name, so earlier runs are reused
                workdir = out / (f"{variant}-{arm}" + (f"-s{seed}" if seed else ""))
                seconds = run(spec, [*fine, f"init={init}", f"seed={seed}"], workdir)
                metrics = evaluate_run(workdir, overwrite=True)
                key = f"{variant}/{arm}" + (f"/s{seed}" if seed else "")
                results[key] = {"steps": args.finetune_steps, "seconds": seconds, "seed": seed, **metrics}
    results["pick/aic"] = aic_baseline(out / "pick-scratch")

    best = min(("scratch", "pretrained"), key=lambda a: results[f"pick/{a}"]["P/mae_s"] or np.inf)
    import obspy

    from seisfuse.eval.evaluate import load_predictor
    from seisfuse.eval.pick import pick_files

    table = out / "event_picks.csv"
    predictor = load_predictor(out / f"pick-{best}", task="pick")
    summary = pick_files([str(Path(obspy.__file__).parent / EVENT)], predictor, str(table), overwrite=True)
    results["event"] = {"run": f"pick-{best}", "picks": summary.picks, "table": table.read_text()}
    (out / "study.json").write_text(json.dumps(M.to_jsonable(results), indent=2))
    print_table(results)


def print_table(results: dict[str, dict]) -> None:
    """Mean ± standard deviation over the seeds of each arm (n = number of seeds)."""
    print("| task | metric | scratch | pretrained |")
    print("|---|---|---|---|")
    for variant, keys in (("facies", ("mIoU", "PA")), ("denoise", ("PSNR", "MSE")),
                          ("pick", ("P/mae_s", "P/within_0.1s", "S/mae_s", "S/within_0.1s"))):
        for key in keys:
            cells = []
            for arm in ("scratch", "pretrained"):
                values = np.asarray([r[key] for name, r in results.items()
                                     if name.startswith(f"{variant}/{arm}") and r.get(key) is not None])
                cells.append(f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0:.4f} "
                             f"(n={len(values)})" if len(values) else "—")
            print(f"| {variant} | {key} | {' | '.join(cells)} |")
    aic = results["pick/aic"]
    print(f"AIC picker on the same windows: P MAE {aic['P/mae_s']:.4f} s, within 0.1 s "
          f"{aic['P/within_0.1s']:.3f}, abstained on {aic['P/abstained']} of {aic['P/records']}")
    print(f"obspy event ({results['event']['run']}): picks {results['event']['picks']}")


if __name__ == "__main__":
    main()
