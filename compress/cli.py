"""``compress`` command line: translate flags into a config and call the library. Nothing else.

>>> main(["run", "tiny_mobilenet_v3", "--data", "digits", "--prune", "0.5", "--int8"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import errno
import shlex
import sys
from pathlib import Path
from typing import Any

from compress.errors import CompressError

EXAMPLES = {
    "compress": ["compress run mobilenet_v3 --prune 0.5 --int8", "compress compare runs/p0 runs/p50",
                 "compress bench runs/<run>/edge"],
    "run": ["compress run mobilenet_v3 --prune 0.5 --int8 --out runs/p50",
            "compress run --config runs/p50/config.yaml --out runs/p50_again",
            "compress run --out runs/p50 --resume"],
    "list": ["compress list", "compress list --countries"],
    "report": ["compress report runs/p50"],
    "compare": ["compress compare runs/p0 runs/p50 runs/p50_int8 --out runs/compare"],
    "bench": ["compress bench runs/p50/edge --threads 1", "compress bench model.onnx --json"],
}

# Flags that set a config key (dest → dotted key in RunConfig). A stage's own switch sets its section:
# --int8 sets `quantize` and --edge-friendly sets `edge_friendly` (on, with any options given beside it).
CONFIG_FLAGS = {
    "model": "model", "data": "data", "weights": "weights", "input_size": "input_size", "seed": "seed",
    "device": "device", "country": "country", "power_watts": "power_watts", "web": "web", "max_drop": "max_drop",
    "litert": "litert",
    "allow_chance": "allow_chance",
    "epochs": "train.epochs", "lr": "train.lr",
    "prune": "prune.ratio", "importance": "prune.importance", "prune_steps": "prune.steps",
    "allocation": "prune.allocation",
    "edge_friendly": "edge_friendly", "remove_se": "edge_friendly.remove_se",
    "finetune_epochs": "finetune.epochs", "finetune_lr": "finetune.lr",
    "int8": "quantize", "calibration": "quantize.calibration", "if_int8_slower": "quantize.if_slower",
    "target": "quantize.target",
    "threads": "measure.threads",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, where to look) and exit status 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _epilog(name: str) -> str:
    lines = EXAMPLES[name]
    return ("example:" if len(lines) == 1 else "examples:") + "".join(f"\n  {line}" for line in lines)


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="compress", description="Prune, fine-tune, export and quantize a CNN into a "
                "measured edge bundle.", epilog=_epilog("compress"), formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _run_parser(sub, fmt)
    _other_parsers(sub, fmt)
    return p


def _run_parser(sub: Any, fmt: type) -> None:
    """``compress run``: every help text takes its default from the config dataclasses, never a copy."""
    from compress.config import RunConfig
    from compress.finetune import RECOVERY_LR, SLOW_BACKBONE_RECOVERY_EPOCHS, Finetune
    from compress.measure import MeasureConfig
    from compress.prune import ALLOCATIONS, IMPORTANCES, Prune
    from compress.quantize import CALIBRATIONS, IF_SLOWER, TARGETS, Quantize
    from compress.recipe import DEFAULT_LR, SMALL_DATA, Recipe

    run_cfg, prune, finetune, quantize, recipe = RunConfig(), Prune(), Finetune(), Quantize(), Recipe()
    r = sub.add_parser("run", help="run the pipeline", description="Run baseline → prune → fine-tune → export → "
                       "INT8 → bundle, measuring after every step.", epilog=_epilog("run"), formatter_class=fmt)
    r.add_argument("model", nargs="?", help=f"model name (see `compress list`; default {run_cfg.model})")
    r.add_argument("--config", type=Path, help="YAML config (a run folder's config.yaml replays that run)")
    r.add_argument("--out", type=Path, help="run folder (default: runs/<time>_<model>_<data>)")
    r.add_argument("--data", help=f"fashion-mnist, digits, cifar10, or an image folder (default {run_cfg.data})")
    r.add_argument("--prune", type=float, metavar="RATIO", help="the MACs and params removing this fraction of "
                   f"every layer's channels leaves, in [0, 1) (default 0: no pruning; {prune.ratio:g} is a good start)")
    r.add_argument("--importance", choices=IMPORTANCES, help=f"channel importance for pruning (default "
                   f"{prune.importance})")
    r.add_argument("--prune-steps", type=int, metavar="N", help=f"iterative pruning steps (default {prune.steps})")
    r.add_argument("--allocation", choices=ALLOCATIONS, help="sensitivity: keep the layers a scan finds sensitive, "
                   f"prune the rest harder; uniform: every layer by the ratio (default {prune.allocation})")
    r.add_argument("--int8", action="store_true", default=None, help="static INT8 quantization (default: FP32)")
    r.add_argument("--edge-friendly", action="store_true", default=None,
                   help="swap hardswish/SiLU for ReLU before fine-tuning (faster INT8)")
    r.add_argument("--remove-se", action="store_true", default=None,
                   help="with --edge-friendly: also remove squeeze-and-excitation blocks")
    r.add_argument("--epochs", type=int, metavar="N", help=f"baseline training epochs (default {recipe.epochs}; "
                   "0 keeps the weights as they are)")
    r.add_argument("--lr", type=float, help=f"baseline training peak learning rate for a batch of "
                   f"{recipe.batch_size} (default {DEFAULT_LR:g}, scaled with the batch; under {SMALL_DATA:,} "
                   "training images a short LR range test picks it)")
    r.add_argument("--finetune-epochs", type=int, metavar="N", help="recovery fine-tuning epochs after --prune or "
                   f"--edge-friendly (default {finetune.recovery_epochs}; {SLOW_BACKBONE_RECOVERY_EPOCHS} after "
                   f"fine-tuning pretrained weights on under {SMALL_DATA:,} images, whose backbone learns slowly)")
    r.add_argument("--finetune-lr", type=float, metavar="LR", help="recovery fine-tuning peak learning rate "
                   f"(default: half the baseline's, {RECOVERY_LR:g} for the default job; the baseline's after "
                   "pretrained fine-tuning with a slow backbone)")
    r.add_argument("--weights", help="auto (cached ImageNet weights, else from scratch), imagenet, none, "
                   f"or a state_dict path (default {run_cfg.weights})")
    r.add_argument("--input-size", type=int, metavar="PIXELS", help="input height and width in pixels "
                   f"(default {run_cfg.input_size})")
    r.add_argument("--seed", type=int, help="seed for the data subsets, initialisation and training order "
                   f"(default {run_cfg.seed})")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], help="training device; latency is always measured "
                   f"on the CPU (default {run_cfg.device})")
    r.add_argument("--threads", type=int, metavar="N", help=f"threads for latency measurement (default "
                   f"{MeasureConfig().threads})")
    r.add_argument("--country", metavar="ISO3", help="ISO 3166 alpha-3 country for the carbon intensity "
                   f"(default {run_cfg.country}; `compress list --countries`)")
    r.add_argument("--power-watts", type=float, metavar="WATTS", help="measured device power; energy = watts × time")
    r.add_argument("--web", action="store_true", default=None,
                   help="also bundle the browser/phone page (edge/web/, needs `npm ci --prefix edge_demo/web`)")
    r.add_argument("--if-int8-slower", choices=IF_SLOWER, help="when INT8 runs slower than FP32 on this CPU: keep "
                   f"it and warn, or deploy the FP32 model (default {quantize.if_slower})")
    r.add_argument("--max-drop", type=float, metavar="POINTS", help="accuracy budget: deploy the most compressed "
                   "step within this many top-1 points of the baseline; with --int8, INT8 keeps its most harmful "
                   "nodes in FP32 while it misses what is left of the budget")
    r.add_argument("--allow-chance", action="store_true", default=None,
                   help="deploy even if the model is at or near chance")
    r.add_argument("--resume", action="store_true", help="continue the interrupted run in --out from its last "
                   "finished step, with the config saved there (re-running into the same folder does this too)")
    r.add_argument("--force", action="store_true", help="replace a finished run in --out")
    r.add_argument("--nproc", type=int, metavar="N", help="train on N data-parallel processes (PyTorch DDP, started "
                   "with torchrun; same as `torchrun --nproc-per-node N -m compress run ...`)")
    r.add_argument("--max-restarts", type=int, default=0, metavar="K", help="with --nproc: restart the processes "
                   "up to K times after one dies; training resumes from its last finished epoch (default 0)")
    r.add_argument("--calibration", choices=CALIBRATIONS, help=f"INT8 calibration method (default "
                   f"{quantize.calibration})")
    r.add_argument("--litert", action="store_true", default=None, help="also bundle model.tflite and a gated "
                   "model_int8.tflite for phone apps (LiteRT; needs tools/litert/setup.sh, which ./install.sh --test runs)")
    r.add_argument("--target", choices=TARGETS, help="the CPU the INT8 model is built for: x86_64, arm64 (a Raspberry "
                   f"Pi, a phone) or host, this machine (default {quantize.target})")
    _output_flags(r)


def _other_parsers(sub: Any, fmt: type) -> None:
    ls = sub.add_parser("list", help="list models, data sets and stages", epilog=_epilog("list"),
                        formatter_class=fmt)
    ls.add_argument("--countries", action="store_true", help="list the country codes --country accepts")

    rp = sub.add_parser("report", help="re-render report.md and report.html from a run's report.json",
                        epilog=_epilog("report"), formatter_class=fmt)
    rp.add_argument("run_dir", type=Path)

    c = sub.add_parser("compare", help="put runs side by side (table, accuracy-vs-latency plot, Pareto frontier)",
                       epilog=_epilog("compare"), formatter_class=fmt)
    c.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    c.add_argument("--out", type=Path, default=Path("runs/compare"), help="where compare.html/.md go "
                   "(default runs/compare)")

    b = sub.add_parser("bench", help="measure an edge bundle or an ONNX model on this machine",
                       epilog=_epilog("bench"), formatter_class=fmt)
    b.add_argument("target", type=Path, help="an edge/ bundle folder or a .onnx file")
    b.add_argument("--threads", type=int, default=1, metavar="N", help="threads (default 1)")
    b.add_argument("--power-watts", type=float, metavar="WATTS", help="measured device power; energy = watts × time")
    b.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds (default 5)")
    b.add_argument("--json", action="store_true", help="print the bench record as JSON")

    from compress import sweep  # imports neither torch nor ray

    sweep.add_parser(sub)


def _output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the final report.json to stdout (implies --quiet)")


def _flag(dest: str) -> str:
    """How the user spells the flag with argparse ``dest`` (``finetune_epochs`` → ``--finetune-epochs``)."""
    return "the model argument" if dest == "model" else "--" + dest.replace("_", "-")


def overrides_from_args(a: argparse.Namespace) -> tuple[dict, dict[str, str]]:
    """Only the flags the user gave, as YAML-shaped overrides (they win over the YAML and the defaults), and
    the flag that set each dotted key (for errors, and so that an option never turns its stage on by itself)."""
    o: dict = {}
    flags: dict[str, str] = {}
    for dest, key in CONFIG_FLAGS.items():
        v = getattr(a, dest, None)
        if v is None:
            continue
        section, _, field_name = key.partition(".")
        if field_name:
            o.setdefault(section, {})[field_name] = v
        elif key in ("quantize", "edge_friendly"):  # a stage switch: on, merged with its options
            o.setdefault(section, {})
        else:
            o[key] = v
        flags[key] = _flag(dest)
    return o, flags


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed one usage line and the error
        return int(e.code or 0)
    try:
        if args.command == "run" and args.nproc is not None:  # distributed (#11): torchrun runs N copies of this
            from compress.distributed import launch

            argv = sys.argv[1:] if argv is None else list(argv)
            if args.out is None:  # named now, so that a restarted worker group resumes this run, not a new one
                from compress.config import resolve
                from compress.rundir import default_run_dir

                overrides, flags = overrides_from_args(args)
                argv += ["--out", str(default_run_dir(resolve(args.config, overrides, flags=flags)))]
            return launch(argv, nproc=args.nproc, max_restarts=args.max_restarts)
        if args.command == "run":
            return _run(args)
        if args.command == "list":
            return _list(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "report":
            return _report(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "sweep":
            from compress import sweep

            return sweep.main(args)
    except CompressError as e:
        for problem in getattr(e, "problems", None) or [str(e)]:
            print(f"compress: error: {' '.join(str(problem).split())}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS):
            where = f" writing {e.filename}" if e.filename else ""
            print(f"compress: error: {e.strerror}{where}: free disk space or choose another --out; finished "
                  "steps are kept and `--resume` continues from them", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("compress: interrupted", file=sys.stderr)
        return 130
    return 1


def _run(args: argparse.Namespace) -> int:
    from compress import config, console, distributed, pipeline
    from compress.rundir import default_run_dir, prepare_run_dir, resumable

    overrides, flags = overrides_from_args(args)
    if args.resume and not args.out:
        raise CompressError("--resume needs --out: the run folder to continue")
    if args.resume and args.config is None:
        cfg = _resumed_config(args.out, overrides, flags)
    else:
        cfg = config.resolve(args.config, overrides, flags=flags)
    run_dir = args.out or default_run_dir(cfg)
    if distributed.launched():  # distributed (#11): rank 0 owns the run folder; the other ranks only train
        from compress.train import resolve_device

        distributed.init(resolve_device(cfg.device))
        run_dir = distributed.from_main(run_dir)
        args.force = args.force and not distributed.restarted()  # after a restart: resume, never wipe the run
        if not distributed.is_main():
            pipeline.run(cfg, run_dir)
            return 0
    quiet = args.quiet or args.json
    try:
        with prepare_run_dir(run_dir, resume=args.resume, force=args.force):
            with console.Progress(mode="quiet" if quiet else "auto") as progress:
                report = pipeline.run(cfg, run_dir, progress=progress)
    except CompressError:
        _print_finished_steps(run_dir)
        raise
    except KeyboardInterrupt:
        if run_dir.is_dir() and resumable(run_dir):
            print(f"compress: interrupted; finished work is kept in {run_dir}: continue with "
                  f"`compress run --out {shlex.quote(str(run_dir))} --resume`", file=sys.stderr)
        else:
            print("compress: interrupted before any step finished; nothing was kept", file=sys.stderr)
        return 130
    if args.json:
        print(report.to_json())
    elif not args.quiet:
        console.print_summary(report, run_dir)
    return 0


def _print_finished_steps(run_dir: Path) -> None:
    """After a failed run, the steps it finished (kept for --resume), as a table complete at any width."""
    from compress.pipeline import PROGRESS
    from compress.records import RunReport
    from compress.render import TABLE_HEADERS, markdown_table, table_rows

    if not (run_dir / PROGRESS).is_file():
        return
    try:
        report = RunReport.load(run_dir / PROGRESS)
    except CompressError:
        return
    if report.steps:
        print(f"compress: finished before the error (kept in {run_dir}; `--resume` continues):", file=sys.stderr)
        print(markdown_table(TABLE_HEADERS, table_rows(report)), file=sys.stderr)


def _resumed_config(run_dir: Path, overrides: dict, flags: dict[str, str]):
    """``--resume`` without ``--config``: the config saved in the run folder. Flags given beside it must say the
    same; one that would change the run is an error, not a silent new config."""
    from compress import config

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise CompressError(f"nothing to resume in {run_dir}: it holds no config.yaml from an earlier run; drop "
                            "--resume to start a new run there")
    cfg = config.resolve(saved)
    if overrides:
        wanted = config.resolve(saved, overrides, flags=flags)
        changed = config.differences(cfg, wanted)
        if changed:
            raise config.ConfigError([
                f"{_flag_for(key, flags)} does not match the run being resumed ({key} is {_show(old)} in {saved}, "
                f"{_show(new)} here): drop it to resume that run, or start over with --force"
                for key, old, new in changed])
    return cfg


def _flag_for(key: str, flags: dict[str, str]) -> str:
    return flags.get(key) or next((f for k, f in flags.items() if k.startswith(key + ".") or key.startswith(k + ".")),
                                  key)


def _show(value) -> str:
    if value is None:
        return "off"
    return "on" if isinstance(value, dict) else repr(value) if isinstance(value, str) else str(value)


def _list(args: argparse.Namespace) -> int:
    from compress.chain import STAGE_NAMES
    from compress.data import BUILTIN
    from compress.models import ALIASES, list_models

    if args.countries:
        from compress.energy import countries

        for code, name in sorted(countries().items()):
            print(f"{code}  {name}")
        return 0
    print("models:   " + ", ".join(list_models()) + "  (aliases: " +
          ", ".join(f"{k} → {v}" for k, v in ALIASES.items()) + ")")
    print("data:     " + ", ".join(BUILTIN) + ", or a folder of class subfolders (train/ and val/ optional)")
    print("stages:   " + " → ".join(STAGE_NAMES) + " → bundle")
    return 0


def _report(args: argparse.Namespace) -> int:
    from compress.records import RunReport
    from compress.report import write_renderings

    report = RunReport.load(args.run_dir)
    write_renderings(report, args.run_dir)
    print(f"wrote {args.run_dir / 'report.md'} and {args.run_dir / 'report.html'}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from compress.compare import compare

    result = compare(args.run_dirs, args.out)
    print(result.table)
    print(f"\nwrote {result.html} and {result.md}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import json

    from compress.bench import bench

    record = bench(args.target, threads=args.threads, power_watts=args.power_watts, min_seconds=args.seconds)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        m = record["metrics"]
        energy = "n/a" if m["energy_per_inference_j"] is None else f"{m['energy_per_inference_j'] * 1e3:.3f} mJ"
        print(f"{record['model']}: {m['latency_ms_median']:.3f} ms median, {m['latency_ms_p90']:.3f} ms p90 "
              f"(batch 1, {m['threads']} thread(s), {m['latency_runs']} runs); {m['throughput_ips']:.0f} img/s "
              f"at batch {m['throughput_batch']}; energy/inference {energy} ({m['energy_method']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
