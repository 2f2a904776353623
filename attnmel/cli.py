"""``attnmel``: the command-line front end. Every user error is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from attnmel.errors import AttnMelError
from attnmel.train.rundir import EXPORT, METRICS, ONNX_FILE, SIDECAR_FILE, RunDir

EXPERIMENTS = Path("experiments")


def _verbose_parent() -> argparse.ArgumentParser:
    """``-v`` for every subcommand too (``attnmel evaluate RUN -v``); SUPPRESS keeps a ``-v`` given before the
    subcommand from being reset by the subcommand's default."""
    v = argparse.ArgumentParser(add_help=False)
    v.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show debug logs and full tracebacks")
    return v


def _sub(sub: argparse._SubParsersAction, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand's parser, which takes ``-v`` as well."""
    return sub.add_parser(name, parents=[_verbose_parent()], **kwargs)


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, choices=("auto", "cpu", "gpu", "cuda", "mps"),
                   help="where the model runs (default: the run's trainer.accelerator; auto = the GPU when present)")


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = _sub(sub, "data", help="dataset tools: synth, check, stats")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    s = _sub(dsub, "synth", help="write a synthetic lesion dataset in the ISIC 2017 layout")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--n", type=int, default=600)
    s.add_argument("--size", type=int, default=96)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--spurious", action="store_true",
                   help="plant an artefact outside the lesion that tracks the label in train only")
    s.add_argument("--force", action="store_true",
                   help="replace a synthetic dataset already in --out (runs trained on it point there)")
    s.add_argument("--artefact", default=None, help="sticker | ruler | ink | lens | bubbles (default sticker)")
    s.add_argument("--melanoma-rate", type=float, default=None, help="share of melanomas carrying it (default 0.9)")
    s.add_argument("--benign-rate", type=float, default=None, help="share of benign lesions carrying it (default 0.1)")
    for split, default in (("train", "shortcut"), ("val", "balanced"), ("test", "balanced")):
        s.add_argument(f"--{split}", default=None, dest=f"cond_{split}",
                       help=f"{split} condition: shortcut | balanced | reversed | absent (default {default})")
    s.add_argument("--extra-tests", default=None, help="extra test splits, e.g. reversed,absent -> test_reversed, ...")
    s.add_argument("--difficulty", type=float, default=None, help="lesion-cue difficulty in [0, 1] (default 0)")
    s.add_argument("--no-clutter", action="store_true", help="no label-independent rulers / lens corners")
    s.add_argument("--attributes", action="store_true",
                   help="lesions with the five ISIC 2018 Task 2 attributes, in the Task 2 layout")
    c = _sub(dsub, "check", help="verify a download: images, labels and masks per split and class")
    c.add_argument("--dataset", required=True)
    c.add_argument("--root", required=True, type=Path)
    c.add_argument("--artefact-flags", type=Path, default=None, metavar="PATH",
                   help="per-image artefact flags (CSV, or Reveal-to-Revise JSON): count them per split and class")
    c.add_argument("--artefact-masks", type=Path, default=None, metavar="DIR", help="folder of artefact masks")
    c.add_argument("--label-column", default=None, help="folder: the diagnosis column of labels.csv ...")
    c.add_argument("--positive-class", default=None, help="... and its value that means melanoma")
    st = _sub(dsub, "stats", help="per-channel mean/std of a dataset's training split")
    st.add_argument("--dataset", required=True)
    st.add_argument("--root", required=True, type=Path)
    st.add_argument("--split", default="train")


def _add_launcher(sw: argparse.ArgumentParser) -> None:
    """``attnmel sweep`` on a SLURM cluster: launcher and resources (None = the sweep file's ``slurm:``)."""
    g = sw.add_argument_group("cluster (--launcher slurm; defaults from the sweep file's slurm: block)")
    g.add_argument("--launcher", default="local", help="local (default: runs here) or slurm (one sbatch job per run)")
    g.add_argument("--partition", default=None)
    g.add_argument("--gpus-per-run", type=int, default=None, help="GPUs per node (default: trainer.devices on GPU)")
    g.add_argument("--cpus-per-run", type=int, default=None, help="--cpus-per-task of each job")
    g.add_argument("--mem-gb", type=float, default=None, help="memory per node, GiB")
    g.add_argument("--time-min", type=int, default=None,
                   help="time limit per job, minutes (requeued with its checkpoint)")
    g.add_argument("--account", default=None)
    g.add_argument("--sbatch", action="append", default=None, metavar="KEY=VALUE",
                   help="extra sbatch option, repeatable (e.g. --sbatch qos=high --sbatch constraint=a100)")
    g.add_argument("--wait", action="store_true", help="wait for the jobs to end, then write the summary")


def _slurm_options(args: argparse.Namespace) -> dict:
    return {"partition": args.partition, "gpus_per_run": args.gpus_per_run, "cpus_per_run": args.cpus_per_run,
            "mem_gb": args.mem_gb, "time_min": args.time_min, "account": args.account, "sbatch": args.sbatch}


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    """The commands that use a trained run: evaluate, predict, report (each with ``--device``)."""
    e = _sub(sub, "evaluate", help=f"score a run on a split: {METRICS} and {RunDir('.').predictions().name}")
    e.add_argument("run_dir", type=Path)
    _add_external(e)
    _add_device(e)
    e.add_argument("--split", default=None,
                   help="train, val or test; a synthetic set also has its extra test splits (test_reversed, ...); "
                        "default: test, and for a shortcut benchmark val and every extra test split too, as after "
                        "training (the run loaded once)")

    pr = _sub(sub, "predict", help="class probabilities for images, optionally with attention overlays")
    pr.add_argument("run_dir", type=Path)
    _add_device(pr)
    pr.add_argument("images", nargs="+", type=Path)
    pr.add_argument("--overlay", type=Path, metavar="DIR", help="write a PNG per image with its attention maps")
    pr.add_argument("--overlay-size", type=int, default=1024, metavar="PX",
                    help="long side of each overlay panel in pixels (default 1024; smaller originals keep theirs)")

    r = _sub(sub, "report", help="HTML attention-quality report of a run")
    r.add_argument("run_dir", type=Path)
    _add_external(r)
    _add_device(r)
    r.add_argument("--split", default="test", choices=["val", "test"])
    r.add_argument("--ig", action="store_true", help="also compute Integrated Gradients (slow)")
    r.add_argument("--limit", type=int, default=None, help="use at most this many images")
    r.add_argument("--overlay-size", type=int, default=1024, metavar="PX",
                   help="long side of each gallery panel in pixels (default 1024; smaller originals keep theirs)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnmel", description="Interpretable attention-based melanoma classification.")
    p.add_argument("-v", "--verbose", action="store_true", help="show debug logs and full tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True)
    _add_data(sub)

    t = _sub(sub, "train", help="train a model from a config into runs/<name>/")
    t.add_argument("--config", type=Path, help="experiments/<dataset>.yaml")
    t.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue an interrupted run from its last checkpoint")
    t.add_argument("overrides", nargs="*",
                   help="key=value overrides, e.g. trainer.max_epochs=5 data.root=/data/isic2017")

    _add_run_commands(sub)

    sw = _sub(sub, "sweep", help="run an ablation sweep: arms x seeds, then the summary")
    sw.add_argument("sweep_file", type=Path)
    sw.add_argument("--dataset", default=None, help="the dataset variant of the sweep (synthetic, isic2017, isic2016)")
    sw.add_argument("--jobs", type=int, default=None,
                    help="runs in this many parallel processes (default: the sweep file's, else 1)")
    sw.add_argument("--out", type=Path, default=Path("sweeps"))
    _add_launcher(sw)
    sw.add_argument("overrides", nargs="*", help="key=value overrides applied to every arm")

    ex = _sub(sub, "export", help=f"export a run for deployment: {ONNX_FILE} + {SIDECAR_FILE} (no AttnMel needed)")
    ex.add_argument("run_dir", type=Path)
    ex.add_argument("--format", default="onnx", help="onnx (the only one so far)")
    ex.add_argument("--out", type=Path, default=None,
                    help=f"folder for {ONNX_FILE} and {SIDECAR_FILE} (default: RUN_DIR/{EXPORT})")

    sg = _sub(sub, "segment", help="write lesion masks (8-bit PNG, 0/255, image size) with a segmentation run")
    sg.add_argument("run_dir", type=Path)
    _add_device(sg)
    sg.add_argument("images", nargs="+", type=Path)
    sg.add_argument("--out", type=Path, required=True)
    sg.add_argument("--attributes", action="store_true",
                    help="an attribute run (ISIC 2018 Task 2): one <id>_attribute_<name>.png per attribute")

    d = _sub(sub, "demo", help="synthetic data -> train -> evaluate -> report, on a CPU in minutes")
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument("overrides", nargs="*")
    return p


def _add_external(p: argparse.ArgumentParser) -> None:
    """evaluate / report: another dataset to score (external validation) and keys that describe the data."""
    p.add_argument("--dataset", default=None, help="score every image of another dataset (e.g. folder) ...")
    p.add_argument("--root", type=Path, default=None, help="... in this folder; results under their own name")
    p.add_argument("overrides", nargs="*", help="keys that describe the data, e.g. data.artefact_flags=PATH "
                                                "data.artefact_masks=DIR data.label_column=dx")


def _split_run_dir(out: Path) -> list[str]:
    return [f"out_dir={out.parent}", f"name={out.name}"]


# Subcommands whose positional ``overrides`` may come after options (`sweep FILE --dataset d key=value`).
TAKES_OVERRIDES = ("train", "sweep", "demo", "evaluate", "report")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides may stand anywhere after the subcommand.

    argparse stops filling a ``nargs="*"`` positional at the first option, and ``parse_intermixed_args``
    does not support subparsers, so leftover ``key=value`` words are collected here instead.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "cmd", None) in TAKES_OVERRIDES and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="attnmel: %(levelname)s: %(message)s")
    logging.getLogger("attnmel").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return dispatch(args) or 0
    except AttnMelError as e:
        if args.verbose:
            raise
        print(f"attnmel: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only folder, a file where a folder should be
        if args.verbose:
            raise
        print(f"attnmel: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        detail = str(e) or "finished outputs are kept; `attnmel train --resume RUN_DIR` continues a run"
        print(f"attnmel: interrupted: {detail}", file=sys.stderr)
        return 130


def os_error_message(e: OSError) -> str:
    """``<path>: <strerror>`` (both paths of a failed rename; the bare reason when no path is known)."""
    reason = e.strerror or str(e) or e.__class__.__name__
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def dispatch(args: argparse.Namespace) -> int | None:
    """Run the parsed subcommand: one flat branch per command, each importing and calling the layer that does the
    work (the longer ones in their own helpers)."""
    if args.cmd == "data":
        return _data(args)
    if args.cmd == "train":
        return _train(args)
    if args.cmd == "evaluate":
        return _evaluate(args)
    if args.cmd == "predict":
        from attnmel.train.predict import predict_images

        predict_images(args.run_dir, _expand_images(args.images), overlay_dir=args.overlay,
                       overlay_size=args.overlay_size, device=args.device)
        return 0
    if args.cmd == "report":
        from attnmel.report.build import build_report

        path = build_report(args.run_dir, split=args.split, integrated_gradients=args.ig, limit=args.limit,
                            overlay_size=args.overlay_size, device=args.device, overrides=args.overrides,
                            dataset=args.dataset, root=args.root)
        print(f"report: {path}")
        return 0
    if args.cmd == "sweep":
        from attnmel.sweep.run import run_sweep

        return run_sweep(args.sweep_file, dataset=args.dataset, jobs=args.jobs, out_root=args.out,
                         overrides=args.overrides, launcher=args.launcher, slurm_options=_slurm_options(args),
                         wait=args.wait)
    if args.cmd == "export":
        from attnmel.train.export import export_run

        paths = export_run(args.run_dir, args.format, args.out)
        print(f"exported: {paths['onnx']} (+ {paths['sidecar'].name}: classes, input size, normalisation, "
              "preprocessing, parity)")
        return 0
    if args.cmd == "segment":
        from attnmel.train.inference import open_run
        from attnmel.train.segment import segment_images

        segment_images(open_run(args.run_dir, args.device), args.images, args.out, attributes=args.attributes)
        return 0
    if args.cmd == "demo":
        return _demo(args)
    raise AttnMelError(f"unknown command {args.cmd}")


def _train(args: argparse.Namespace) -> int:
    """``attnmel train``: a new run from --config, or --resume of a run folder."""
    from attnmel import config as config_mod
    from attnmel.train.run import train

    if args.resume:
        from attnmel.train.rundir import resume_config

        folder = RunDir(args.resume)
        if args.config is not None:
            raise AttnMelError("train: --config and --resume do not combine: a resumed run keeps its own config "
                               f"({folder.config_file}); give key=value for the keys that may change")
        if not folder.is_run():
            raise AttnMelError(f"{args.resume}: not a run folder (no {folder.config_file.name})")
        # The folder the user named, wherever it has been moved since it was made.
        out = train(resume_config(args.resume, args.overrides), resume=True)
    else:
        if args.config is None:
            raise AttnMelError("train: give --config experiments/<dataset>.yaml (or --resume RUN_DIR)")
        out = train(config_mod.load_config(args.config, args.overrides))
    _print_headline(out)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """``attnmel evaluate``: one split, every test split of the run, or an external dataset."""
    from attnmel.train.run import evaluate, evaluate_tests

    if args.overrides or args.dataset or args.root:  # data-describing keys, or external data
        m = evaluate(args.run_dir, args.split or "test", device=args.device, overrides=args.overrides,
                     dataset=args.dataset, root=args.root)
    else:
        m = (evaluate_tests(args.run_dir, device=args.device) if args.split is None
             else evaluate(args.run_dir, args.split, device=args.device))
    print(_format_metrics(m))
    if m.get("attention_jaccard"):  # external data with lesion masks
        print("attention jaccard: " + "  ".join(f"{k}={v:.4f}" for k, v in m["attention_jaccard"].items()))
    return 0


def _expand_images(paths: list[Path]) -> list[Path]:
    """A folder stands for the images in it (sorted, not recursive; masks and superpixel maps left out)."""
    from attnmel.data.readers._common import IMAGE_EXTS, list_images

    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(list_images(p).values())
            if not found:
                raise AttnMelError(f"{p}: folder holds no images ({', '.join(sorted(IMAGE_EXTS))})")
            out += found
        else:
            out.append(p)
    return out


def _data(args: argparse.Namespace) -> int:
    if args.data_cmd == "synth":
        from attnmel.data.synthetic import MARKER, generate, options_from_config

        if (args.out / MARKER).is_file() and not args.force:
            raise AttnMelError(f"{args.out}: already holds a synthetic dataset (runs may point at it); "
                               "pass --force to replace it, or choose another --out")
        if args.attributes:
            from attnmel.data.synthetic_attributes import generate_attributes

            out = generate_attributes(args.out, n=args.n, size=args.size, seed=args.seed)
            print(f"synthetic attribute dataset written to {out}")
            return 0
        extra = [c.strip() for c in args.extra_tests.split(",") if c.strip()] if args.extra_tests else None
        opts = options_from_config({
            "n": args.n, "size": args.size, "seed": args.seed, "spurious": args.spurious, "artefact": args.artefact,
            "melanoma_rate": args.melanoma_rate, "benign_rate": args.benign_rate, "train": args.cond_train,
            "val": args.cond_val, "test": args.cond_test, "extra_tests": extra, "difficulty": args.difficulty,
            "clutter": not args.no_clutter})
        out = generate(args.out, **opts)
        print(f"synthetic dataset written to {out}")
        return 0
    if args.data_cmd == "check":
        from attnmel.data.check import run_check

        folder_opts = {k: v for k, v in (("label_column", args.label_column),
                                         ("positive_class", args.positive_class)) if v is not None}
        return run_check(args.dataset, args.root, artefact_flags=args.artefact_flags,
                         artefact_masks=args.artefact_masks, **folder_opts)
    if args.data_cmd == "stats":
        from attnmel import config as config_mod
        from attnmel.data.readers import read_split
        from attnmel.data.stats import compute_stats

        cfg = config_mod.defaults()
        cfg["data"].update(dataset=args.dataset, root=str(args.root))
        index = read_split(args.dataset, args.root, args.split)
        mean, std = compute_stats(index, cfg["data"])
        print(f"mean: [{', '.join(f'{v:.4f}' for v in mean)}]")
        print(f"std:  [{', '.join(f'{v:.4f}' for v in std)}]")
        print("(put these in the config as data.mean / data.std)")
        return 0
    raise AttnMelError(f"unknown data command {args.data_cmd}")


def _demo(args: argparse.Namespace) -> int:
    from attnmel import config as config_mod
    from attnmel.train.run import train

    cfg_path = EXPERIMENTS / "synthetic.yaml"
    if not cfg_path.is_file():
        raise AttnMelError(f"{cfg_path}: not found (run the demo from the repository root)")
    out: Path = args.out
    cfg = config_mod.load_config(cfg_path, [*_split_run_dir(out), *args.overrides])
    if RunDir(out).best.is_file():
        print(f"demo: {out} already trained; re-evaluating (delete the folder to train again)")
        from attnmel.train.run import evaluate

        evaluate(out, "test")
    else:
        train(cfg)
    _print_headline(out)
    from attnmel.report.build import build_report

    path = build_report(out, split="test")
    print(f"report: {path}")
    return 0


def _format_metrics(m: dict) -> str:
    keys = ["auc", "average_precision", "accuracy", "sensitivity", "specificity", "balanced_accuracy", "f1",
            "spec_at_sens_82", "spec_at_sens_89", "spec_at_sens_95", "n_images"]
    parts = []
    for k in keys:
        v = m.get(k)
        if v is None:
            continue
        parts.append(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}")
    return "  ".join(parts)


def _print_headline(run_dir: Path) -> None:
    m = RunDir(run_dir).metrics()
    if m:
        if "attributes" in m and not m.get("segmentation"):
            a = m["attributes"]
            print(f"{run_dir}: task2_jaccard={a['overall']:.4f}  task2_dice={a['micro_average']['dice']:.4f}  "
                  f"n_images={a['n_images']}")
            return
        if m.get("segmentation") and not m.get("classification"):
            seg = m["segmentation"]
            means = "  ".join(f"{k}={v:.4f}" for k, v in seg["mean"].items())
            print(f"{run_dir}: {m.get('split', 'test')}: {means}  n_images={seg['n_images']}")
            return
        print(f"{run_dir}: {_format_metrics(m.get('classification') or {})}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
