"""``compress`` command line: translate flags into a config and call the library. Nothing else.

>>> main(["run", "tiny_mobilenet_v3", "--data", "digits", "--prune", "0.5", "--int8"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from compress.errors import CompressError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, where to look) and exit status 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="compress", description="Prune, fine-tune, export and quantize a CNN into a "
                                "measured edge bundle.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run the pipeline", description="Run baseline → prune → fine-tune → export → "
                       "INT8 → bundle, measuring after every step.")
    r.add_argument("model", nargs="?", help="model name (see `compress list`); default mobilenet_v3")
    r.add_argument("--config", type=Path, help="YAML config (a run folder's config.yaml replays that run)")
    r.add_argument("--out", type=Path, help="run folder (default: runs/<time>_<model>_<data>)")
    r.add_argument("--data", help="fashion-mnist (default), digits, cifar10, or an image folder")
    r.add_argument("--prune", type=float, metavar="RATIO", help="fraction of channels removed per layer, in [0, 1)")
    r.add_argument("--importance", choices=["l2", "taylor", "bn"], help="channel importance for pruning")
    r.add_argument("--prune-steps", type=int, help="iterative pruning steps")
    r.add_argument("--int8", action="store_true", default=None, help="static INT8 quantization")
    r.add_argument("--edge-friendly", action="store_true", default=None,
                   help="swap hardswish/SiLU for ReLU before fine-tuning (faster INT8)")
    r.add_argument("--remove-se", action="store_true", default=None,
                   help="with --edge-friendly: also remove squeeze-and-excitation blocks")
    r.add_argument("--epochs", type=int, help="baseline training epochs")
    r.add_argument("--finetune-epochs", type=int, help="recovery fine-tuning epochs")
    r.add_argument("--weights", help="auto (default: cached ImageNet weights, else from scratch), imagenet, none, "
                   "or a state_dict path")
    r.add_argument("--input-size", type=int, help="input height and width in pixels (default 32)")
    r.add_argument("--seed", type=int)
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], help="training device (latency is always on CPU)")
    r.add_argument("--threads", type=int, help="threads for latency measurement (default 1)")
    r.add_argument("--country", help="ISO alpha-3 country for carbon intensity (default USA)")
    r.add_argument("--power-watts", type=float, help="measured device power; energy = watts × time")
    r.add_argument("--web", action="store_true", default=None,
                   help="also bundle the browser/phone page (edge/web/, needs `npm ci --prefix edge_demo/web`)")
    r.add_argument("--if-int8-slower", choices=["warn", "fallback"], help="when INT8 runs slower than FP32 on "
                   "this CPU: keep it and warn (default), or deploy the FP32 model")
    r.add_argument("--max-drop", type=float, metavar="POINTS", help="accuracy budget: deploy the most compressed "
                   "step within this many top-1 points of the baseline")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run in --out from its last "
                   "finished step (re-running into the same folder does this too)")
    r.add_argument("--force", action="store_true", help="replace a finished run in --out")
    r.add_argument("--calibration", choices=["minmax", "entropy", "percentile"], help="INT8 calibration method")
    _output_flags(r)

    sub.add_parser("list", help="list models, data sets and stages")

    rp = sub.add_parser("report", help="re-render report.md and report.html from a run's report.json")
    rp.add_argument("run_dir", type=Path)

    c = sub.add_parser("compare", help="put runs side by side (table, accuracy-vs-latency plot, Pareto frontier)")
    c.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    c.add_argument("--out", type=Path, default=Path("runs/compare"), help="where compare.html/.md go "
                   "(default runs/compare)")

    b = sub.add_parser("bench", help="measure an edge bundle or an ONNX model on this machine")
    b.add_argument("target", type=Path, help="an edge/ bundle folder or a .onnx file")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--power-watts", type=float)
    b.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds (default 5)")
    b.add_argument("--json", action="store_true", help="print the bench record as JSON")
    return p


def _output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the final report.json to stdout (implies --quiet)")


def overrides_from_args(a: argparse.Namespace) -> dict:
    """Only the flags the user gave; they win over the YAML and the defaults."""
    o: dict = {}
    simple = {"model": "model", "data": "data", "weights": "weights", "input_size": "input_size", "seed": "seed",
              "device": "device", "country": "country", "power_watts": "power_watts", "int8": "int8", "web": "web",
              "max_drop": "max_drop"}
    for attr, key in simple.items():
        v = getattr(a, attr)
        if v is not None:
            o[key] = v
    nested = {("prune", "ratio"): a.prune, ("prune", "importance"): a.importance, ("prune", "steps"): a.prune_steps,
              ("train", "epochs"): a.epochs, ("finetune", "epochs"): a.finetune_epochs,
              ("edge_friendly", "enabled"): a.edge_friendly, ("edge_friendly", "remove_se"): a.remove_se,
              ("measure", "threads"): a.threads, ("quantize", "calibration"): a.calibration,
              ("quantize", "if_slower"): a.if_int8_slower}
    for (section, key), v in nested.items():
        if v is not None:
            o.setdefault(section, {})[key] = v
    if a.remove_se and not a.edge_friendly:
        o.setdefault("edge_friendly", {})["enabled"] = True
    return o


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed one usage line and the error
        return int(e.code or 0)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "list":
            return _list()
        if args.command == "bench":
            return _bench(args)
        if args.command == "report":
            return _report(args)
        if args.command == "compare":
            return _compare(args)
    except CompressError as e:
        print(f"compress: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS):
            where = f" writing {e.filename}" if e.filename else ""
            print(f"compress: error: {e.strerror}{where}: free disk space or choose another --out; finished "
                  "steps are kept and `--resume` continues from them", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("compress: interrupted; finished steps are kept in the run folder", file=sys.stderr)
        return 130
    return 1


def _run(args: argparse.Namespace) -> int:
    from compress import config, console, pipeline
    from compress.rundir import default_run_dir, prepare_run_dir

    cfg = config.resolve(args.config, overrides_from_args(args))
    if args.resume and not args.out:
        raise CompressError("--resume needs --out: the run folder to continue")
    run_dir = args.out or default_run_dir(cfg)
    quiet = args.quiet or args.json
    with prepare_run_dir(run_dir, resume=args.resume, force=args.force):
        with console.Progress(mode="quiet" if quiet else "auto") as progress:
            report = pipeline.run(cfg, run_dir, progress=progress)
    if args.json:
        print(report.to_json())
    elif not args.quiet:
        console.print_summary(report, run_dir)
    return 0


def _list() -> int:
    from compress.data import BUILTIN
    from compress.models import ALIASES, list_models
    from compress.pipeline import STAGE_NAMES

    print("models:   " + ", ".join(list_models()) + "  (aliases: " +
          ", ".join(f"{k} → {v}" for k, v in ALIASES.items()) + ")")
    print("data:     " + ", ".join(BUILTIN) + ", or a folder of class subfolders (train/ and val/ optional)")
    print("stages:   " + " → ".join(STAGE_NAMES) + " → bundle")
    return 0


def _report(args: argparse.Namespace) -> int:
    from compress.report import RunReport, write_reports

    report = RunReport.load(args.run_dir)
    write_reports(report, args.run_dir)
    print(f"wrote {args.run_dir / 'report.md'} and {args.run_dir / 'report.html'}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from compress.compare import compare

    html, md = compare(args.run_dirs, args.out)
    print(f"wrote {html} and {md}")
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
