"""The `seisfuse` command. Each subcommand imports its machinery only when it runs."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence


def _convert(args: argparse.Namespace, _overrides: list[str]) -> int:
    """Pretrained or fine-tuned files alike: the head keys decide (the file is read once)."""
    from seisfuse.convert import seislm as seislm_convert
    from seisfuse.convert import sfm as sfm_convert
    from seisfuse.convert.common import save_converted
    from seisfuse.convert.torch_format import read_torch_checkpoint
    from seisfuse.train.checkpoint import probe_writable

    probe_writable(args.output_dir)  # an unwritable output fails now, not after reading a 1 GB file
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checkpoint = read_torch_checkpoint(args.input)
        if args.model == "sfm" and sfm_convert.is_sfm_finetuned(checkpoint):
            model, variables = sfm_convert.sfm_finetuned_from_checkpoint(checkpoint, num_heads=args.num_heads)
            kind, config, params = "sfm-finetuned", sfm_convert.finetuned_model_config(model), variables
        elif args.model == "sfm":
            cfg, params = sfm_convert.sfm_from_checkpoint(checkpoint, args.input, num_heads=args.num_heads,
                                                          decoder_num_heads=args.decoder_num_heads)
            kind, config = "sfm", cfg.to_dict()
        else:
            overrides = {"num_attention_heads": args.num_heads} if args.num_heads else {}
            if seislm_convert.is_seislm_finetuned(checkpoint):
                model, params = seislm_convert.seislm_finetuned_from_checkpoint(checkpoint, args.input,
                                                                               **overrides)
                kind, config = "seislm-finetuned", seislm_convert.finetuned_model_config(model)
            else:
                cfg, params = seislm_convert.seislm_from_checkpoint(checkpoint, args.input, **overrides)
                kind, config = "seislm", cfg.to_dict()
    notes = [str(w.message) for w in caught]
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    out = save_converted(args.output_dir, kind, config, params, source=str(args.input), notes=notes)
    print(f"wrote {kind} {'variables' if kind.endswith('finetuned') else 'params'} and config.json to {out}")
    if kind.endswith("finetuned"):
        print(f"task: {config['task']}; start fine-tuning from it with `seisfuse finetune --init {out}`")
    else:
        print(f"config: {config}")
    return 0


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from seisfuse.parallel import initialize_distributed
    from seisfuse.train.config import load_config
    from seisfuse.train.loop import train
    from seisfuse.train.tasks import make_task

    initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    config = load_config(args.config, overrides)
    if args.command == "finetune":
        from seisfuse.train.finetune import SEISLM_TASKS, SFM_TASKS

        if config.get("task") not in SFM_TASKS + SEISLM_TASKS:
            raise ValueError(f"{args.config} is a {config.get('task')!r} config; `seisfuse finetune` takes "
                             "configs/sfm_finetune.py or configs/seislm_finetune.py (use `seisfuse train`)")
        if args.init is not None:
            config.init = args.init
    _record(args.workdir, args, resume=args.resume)
    train(make_task(config), config, args.workdir, resume=args.resume)
    return 0


def _evaluate(args: argparse.Namespace, overrides: list[str]) -> int:
    from seisfuse.eval.evaluate import evaluate_run

    result = evaluate_run(args.run_dir, data_path=args.data,
                          overrides=[o.removeprefix("--") for o in overrides], out_dir=args.out,
                          max_examples=args.max_examples, overwrite=args.overwrite)
    shown = {k: v for k, v in result.items() if isinstance(v, (int, float)) and k not in ("step",)}
    print(f"evaluated {result['examples']} examples of {args.run_dir} (step {result['step']}):")
    for key, value in shown.items():
        print(f"  {key:28s} {value:.4f}" if isinstance(value, float) else f"  {key:28s} {value}")
    print(f"wrote {args.out or args.run_dir + '/eval'}/metrics.json and figures/")
    return 0


def _pick(args: argparse.Namespace, _overrides: list[str]) -> int:
    from seisfuse.eval.evaluate import load_predictor
    from seisfuse.eval.pick import pick_files

    predict = load_predictor(args.run_dir, task="pick", batch_size=PICK_BATCH)
    summary = pick_files(args.inputs, predict, args.out, overwrite=args.overwrite, batch_size=PICK_BATCH,
                         thresholds={"P": args.p_threshold, "S": args.s_threshold}, stride=args.stride)
    counts = ", ".join(f"{n} {phase}" for phase, n in sorted(summary.picks.items())) or "no picks"
    print(f"wrote {counts} from {len(summary.stations)} station(s) in {len(summary.files_ok)} file(s) to "
          f"{summary.out_csv}" + (f"; {len(summary.failed)} file(s) skipped (named above)" if summary.failed
                                  else ""))
    return 1 if summary.failed else 0


PICK_BATCH = 16


def _embed(args: argparse.Namespace, overrides: list[str]) -> int:
    from seisfuse.eval.embed import (
        IMAGE_SUFFIXES,
        WAVEFORM_SUFFIXES,
        list_inputs,
        load_embedder,
        read_items,
        save_embeddings,
    )

    embedder = load_embedder(args.run_dir, args.config, [o.removeprefix("--") for o in overrides])
    modality = _modality(embedder, args.modality, args.inputs)
    key = embedder.input_key(modality)
    files = list_inputs(args.inputs, IMAGE_SUFFIXES if key == "image" else WAVEFORM_SUFFIXES)
    items, names = read_items(files, key, p_window=embedder.p_window, pad=args.pad)
    path, meta = save_embeddings(args.out, embedder(modality, items), names, modality, args.run_dir,
                                 identity=embedder.identity, inputs=files, overwrite=args.overwrite)
    print(f"wrote {len(names)} {modality} embeddings to {path} (names in {meta.name})")
    return 0


def _retrieve(args: argparse.Namespace, overrides: list[str]) -> int:
    from pathlib import Path

    import numpy as np

    from seisfuse.eval.embed import check_retrieval, load_embedder, load_embeddings, read_items
    from seisfuse.eval.metrics import similarity

    gallery, info = load_embeddings(args.gallery)
    embedder = load_embedder(args.run_dir, args.config, [o.removeprefix("--") for o in overrides])
    if not Path(args.query).is_file():
        raise FileNotFoundError(f"query file not found: {args.query}")
    modality = _modality(embedder, args.modality, [args.query])
    k = check_retrieval(info, embedder, modality, args.k, args.gallery)
    items, names = read_items([Path(args.query)], embedder.input_key(modality), p_window=embedder.p_window,
                              pad=args.pad)
    scores = similarity(embedder(modality, items), gallery)
    for name, row in zip(names, scores, strict=True):
        print(f"{name} ({modality}) -> nearest {k} of {len(gallery)} {info['modality']} items:")
        for rank, j in enumerate(np.argsort(-row, kind="stable")[:k], start=1):
            print(f"  {rank:3d}  {row[j]:+.4f}  {info['names'][j]}")
    return 0


def _modality(embedder, requested: str, inputs: Sequence[str]) -> str:
    """The model modality to embed with: as requested, or the one whose tower reads this kind of file."""
    from pathlib import Path

    from seisfuse.eval.embed import IMAGE_SUFFIXES, WAVEFORM_SUFFIXES, guess_input_key, list_inputs

    if requested != "auto":
        return requested
    first = list_inputs(inputs[:1], IMAGE_SUFFIXES + WAVEFORM_SUFFIXES)[0]
    key = guess_input_key(Path(first))
    matches = [m for m in embedder.modalities if embedder.input_key(m) == key]
    if len(matches) != 1:
        raise ValueError(f"{first} looks like a {key}; the model's modalities {list(embedder.modalities)} "
                         "do not decide which tower reads it: pass --modality")
    return matches[0]


def _demo(args: argparse.Namespace, _overrides: list[str]) -> int:
    from seisfuse.demo import HELDOUT_PAIRS, TRAIN_PAIRS, run_demo

    _record(args.out, args)
    run_demo(args.out, train_pairs=args.train_pairs or TRAIN_PAIRS,
             heldout_pairs=args.heldout_pairs or HELDOUT_PAIRS, steps=args.steps, workers=args.workers)
    return 0


def _record(workdir: str, args: argparse.Namespace, resume: bool = False) -> None:
    """The command line that makes (or resumes) a run, kept in WORKDIR/command.json for `seisfuse view`."""
    import jax

    from seisfuse.eval.view import record_command

    if jax.process_index() == 0:
        record_command(workdir, args.argv, resume=resume)


def _view(args: argparse.Namespace, overrides: list[str]) -> int:
    from seisfuse.eval.view import view_run

    path = view_run(args.run_dir, data=args.data, overrides=[o.removeprefix("--") for o in overrides],
                    out=args.out, n=args.n)
    print(f"wrote {path}")
    return 0


def _engine_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    """What `train` and `finetune` share: the config, the run folder, resume and multi-host start."""
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("--workdir", required=True, help="checkpoints, TensorBoard and wandb files go here")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest intact checkpoint in workdir")
    parser.add_argument("--coordinator", default=None, help="multi-host: coordinator host:port")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    parser.set_defaults(run=_train, accepts_overrides=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seisfuse", description=__doc__,
                                     epilog="--debug (anywhere): show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = sub.add_parser("convert", help="import released PyTorch weights (no torch needed)",
                             description="Convert a PyTorch SFM/SeisLM checkpoint into an orbax "
                                         "checkpoint plus config.json. Nothing in the file is executed.")
    convert.add_argument("model", choices=["sfm", "seislm"])
    convert.add_argument("input", help="the .pth / .ckpt file")
    convert.add_argument("output_dir", help="directory to create (must not hold a checkpoint)")
    convert.add_argument("--num-heads", type=int, default=None,
                         help="encoder attention heads, if the file's width/depth match no preset")
    convert.add_argument("--decoder-num-heads", type=int, default=None,
                         help="SFM decoder heads, if the width/depth match no preset")
    convert.set_defaults(run=_convert)

    fit = sub.add_parser("train", help="pretrain or align models on a device mesh (MAE, SeisLM, align)",
                         description="Train from an experiment config. Override any config field with "
                                     "--config.a.b=value (or --a.b=value), e.g. --wandb.mode=disabled.")
    _engine_arguments(fit, "NAME:VARIANT or configs/FILE.py:VARIANT, e.g. mae_pretrain:tiny")

    finetune = sub.add_parser("finetune", help="fine-tune SFM (segment, regress) or SeisLM (pick, classify)",
                              description="Fine-tune a downstream head (and its trunk) from an experiment "
                                          "config, e.g. configs/sfm_finetune.py:facies-tiny or "
                                          "configs/seislm_finetune.py:pick-tiny. Same engine, mesh, "
                                          "checkpoints and --config.a.b=value overrides as `train`.")
    _engine_arguments(finetune, "NAME:VARIANT or configs/FILE.py:VARIANT, e.g. sfm_finetune:facies-tiny")
    finetune.add_argument("--init", default=None,
                          help="start from a `seisfuse convert` folder (pretrained or fine-tuned) or a "
                               "pretraining run of `seisfuse train` (default: the config's init, "
                               "else scratch)")

    evaluate = sub.add_parser("evaluate", help="metrics and figures of a fine-tuning run on held-out data",
                              description="Evaluate a `seisfuse finetune` run: writes RUN/eval/metrics.json "
                                          "(segmentation PA/CPA/MPA/IoU/mIoU/FWIoU, regression MSE/PSNR/"
                                          "MSSSIM/SSIM, pick detection/onset residuals, classification "
                                          "accuracy/F1) and figures/. Override data settings with "
                                          "--data.key=value.")
    evaluate.add_argument("run_dir", metavar="RUN", help="the --workdir of `seisfuse finetune`")
    evaluate.add_argument("--data", default=None, help="evaluation data path (replaces config data.path)")
    evaluate.add_argument("--out", default=None, help="output folder (default RUN/eval)")
    evaluate.add_argument("--max-examples", type=int, default=None, help="stop after this many examples")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing metrics.json")
    evaluate.set_defaults(run=_evaluate, accepts_overrides=True)

    pick = sub.add_parser("pick", help="pick P and S in records of any length with a fine-tuned picker",
                          description="Run a picker trained by `seisfuse finetune` "
                                      "(configs/seislm_finetune.py:pick*) over miniSEED/SAC/any "
                                      "obspy-readable files with sliding windows and write a pick "
                                      "table (CSV).")
    pick.add_argument("inputs", nargs="+", help="files and/or folders")
    pick.add_argument("--run", dest="run_dir", required=True, help="the picker's `seisfuse finetune` workdir")
    pick.add_argument("--out", required=True, help="the pick table to write (.csv)")
    pick.add_argument("--p-threshold", type=float, default=0.3, help="P probability threshold (default 0.3)")
    pick.add_argument("--s-threshold", type=float, default=0.3, help="S probability threshold (default 0.3)")
    pick.add_argument("--stride", type=int, default=1500, help="window step in samples (default 1500)")
    pick.add_argument("--overwrite", action="store_true", help="replace an existing pick table")
    pick.set_defaults(run=_pick)

    embed = sub.add_parser("embed", help="joint-space embeddings of images or waveforms (npy)",
                           description="Embed a file or folder of images (.npy [224,224(,1)] or stacks, "
                                       "SFM .dat) or waveforms (.npy [3001,3] or stacks, miniSEED/SAC) "
                                       "with a trained alignment run. Writes OUT.npy [N, D] and OUT.json "
                                       "(modality, item names).")
    embed.add_argument("inputs", nargs="+", help="files and/or folders")
    embed.add_argument("--run", dest="run_dir", required=True,
                       help="a `seisfuse demo --out` or `seisfuse train` folder")
    embed.add_argument("--out", required=True, help="output .npy path")
    embed.add_argument("--modality", default="auto", help="model modality (default: from the file shapes)")
    embed.add_argument("--config", default=None,
                       help="the run's configs/FILE.py:VARIANT if RUN has no config.json")
    embed.add_argument("--pad", action="store_true",
                       help="zero-fill a waveform component that ends early (default: refuse the record)")
    embed.add_argument("--overwrite", action="store_true", help="replace an existing OUT.npy/OUT.json")
    embed.set_defaults(run=_embed, accepts_overrides=True)

    retrieve = sub.add_parser("retrieve", help="nearest items of the other modality for a query",
                              description="Embed QUERY (an image or waveform file) and list the nearest "
                                          "items of a gallery written by `seisfuse embed`.")
    retrieve.add_argument("query", help="an image or waveform file (a stack gives one answer per item)")
    retrieve.add_argument("--gallery", required=True, help="embeddings .npy from `seisfuse embed`")
    retrieve.add_argument("--run", dest="run_dir", required=True, help="the run that embedded the gallery")
    retrieve.add_argument("-k", type=int, default=5, help="how many nearest items (default 5)")
    retrieve.add_argument("--modality", default="auto", help="the query's modality (default: from its shape)")
    retrieve.add_argument("--config", default=None,
                          help="the run's configs/FILE.py:VARIANT if RUN has no config.json")
    retrieve.add_argument("--pad", action="store_true",
                          help="zero-fill a waveform component that ends early (default: refuse the record)")
    retrieve.set_defaults(run=_retrieve, accepts_overrides=True)

    demo = sub.add_parser("demo", help="generate paired data, align on CPU, evaluate retrieval (minutes)",
                          description="Generate physics-paired synthetic pairs, train the tiny joint model "
                                      "on CPU, evaluate image<->waveform retrieval on held-out pairs and "
                                      "write metrics.json, summary.txt, figures/ and checkpoints/ to --out.")
    demo.add_argument("--out", default="seisfuse-demo", help="output folder (default ./seisfuse-demo)")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    demo.add_argument("--train-pairs", type=int, default=None,
                      help="training pairs (default: the recipe's, 8192)")
    demo.add_argument("--heldout-pairs", type=int, default=None, help="held-out pairs (default 256)")
    demo.add_argument("--workers", type=int, default=None, help="generator processes (default: all cores)")
    demo.set_defaults(run=_demo)

    view = sub.add_parser("view", help="one self-contained HTML report of a run (figures inlined, offline)",
                          description="Write one HTML page showing what a run's model does on held-out "
                                      "examples (sections chosen by its task), with its metrics, training "
                                      "curves, config, software versions and the command that made it. "
                                      "Works on train/finetune/demo runs (partial ones too) and experiment "
                                      "folders (results.json). Override data settings with "
                                      "--data.key=value.")
    view.add_argument("run_dir", metavar="RUN", help="a run folder or an experiment folder")
    view.add_argument("--data", default=None,
                      help="held-out data to show (an SFM .dat task folder for image runs, a SeisBench "
                           "folder or a pick table .csv for waveform runs; default: the run's own)")
    view.add_argument("--out", default=None, help="the page to write (default RUN/report.html)")
    view.add_argument("--n", type=int, default=16, help="examples to show (default 16)")
    view.set_defaults(run=_view, accepts_overrides=True)
    return parser


# Errors a user can cause and fix (bad input, config, paths, permissions, damaged files, NaN):
# one line naming the problem; `--debug` shows the traceback instead. CheckpointError and
# SeismicDataError are ValueErrors, NonFiniteError a FloatingPointError.
ANTICIPATED = (ValueError, KeyError, TypeError, OSError, FloatingPointError)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = argv  # recorded with a run (command.json)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    bad = [e for e in extra if not (e.startswith("--") and "=" in e)]
    if bad:
        parser.error(f"config overrides look like --config.a.b=value, got {' '.join(bad)}")
    try:
        return args.run(args, extra)
    except ANTICIPATED as exc:
        if debug:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"seisfuse {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
