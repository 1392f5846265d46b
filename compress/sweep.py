"""``compress sweep``: a grid of ordinary runs (models × prune ratios × INT8 options × edge-friendly) run as Ray
Tune trials, then re-measured together, with the Pareto frontier and one recommended run (:mod:`compress.sweep_report`).

Each trial is a run folder, ``SWEEP_DIR/trials/<model>_prune<r>_<fp32|int8-<calibration>>[_edge]/``, that
``compress run --config TRIAL/config.yaml`` replays. A second sweep into the folder reuses each trial whose
report.json holds the same config and resumes unfinished ones. Trials run side by side, so their own latencies are
not trusted and, unless the base config says otherwise, ``measure`` is short (:data:`TRIAL_MEASURE`) and INT8's
speed check is off (``quantize.speed_check_runs: 0``). Trials sharing a baseline train it once. Ray is an optional
extra that nothing else imports; with ``ray_address``, ``sweep_dir`` must be at the same path on every node.
Test hook: ``COMPRESS_SWEEP_FAIL_ONCE=<trial>[,<trial>]`` fails those trials' first attempt after a recorded step.

>>> run_sweep({"model": "tiny_mobilenet_v3", "data": "digits",
...            "sweep": {"prune": [0, 0.5], "int8": [False, True]}}, Path("runs/sweep"))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import itertools
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from compress.errors import CompressError
from compress.quantize import CALIBRATIONS
from compress.sweep_report import Trial, trial_name, trial_state

AXES = ("model", "prune", "int8", "edge_friendly")  # the keys a `sweep:` section may hold
TRIAL_MEASURE = {"warmup_runs": 10, "min_runs": 100, "min_seconds": 0.3, "throughput_seconds": 0.3}
# What makes two trials share a baseline (its cache key is computed from these, with the data loaded).
BASELINE_KEYS = ("model", "weights", "train", "data", "input_size", "seed", "limit_train", "limit_test", "val_fraction")
FAIL_ONCE_ENV = "COMPRESS_SWEEP_FAIL_ONCE"
INSTALL = "pip install 'compress[ray]'"
EXAMPLE = ("compress sweep tiny_mobilenet_v3 mobilenet_v3 --data digits --prune 0 0.5 --int8 both "
           "--edge-friendly both --out runs/sweep --max-concurrent 2 --max-drop 1.0")


# ------------------------------------------------------------------------------------------------ the grid

def load_grid(grid_config: dict | str | Path, where: str = "") -> tuple[dict, dict, str]:
    """``(axes, base, where)``: the ``sweep:`` section as lists, the rest (a run config), and the file it came from
    (``where``, for messages: a YAML file's name by default)."""
    from compress.config import load_yaml

    path = isinstance(grid_config, (str, Path))
    where = where or (str(grid_config) if path else "")
    base = dict(load_yaml(Path(grid_config)) if path else grid_config)
    axes, at = base.pop("sweep", None) or {}, f"{where}: " if where else ""
    if not isinstance(axes, dict):
        raise CompressError(f"{at}sweep must be a mapping like {{prune: [0, 0.5], int8: [false, true]}}, got {axes!r}")
    for k, v in axes.items():
        if k not in AXES:
            raise CompressError(f"{at}unknown key sweep.{k}: valid keys in sweep are {', '.join(AXES)}")
        if v == []:
            raise CompressError(f"{at}sweep.{k} is empty: give at least one value")
    return {k: v if isinstance(v, list) else [v] for k, v in axes.items()}, base, where


def axis_overrides(axis: str, value: Any) -> dict:
    """One grid value as YAML-shaped overrides of the base config."""
    if axis == "model":
        return {"model": value}
    if axis == "prune" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"prune": {"ratio": float(value)} if value else None}
    if axis == "int8" and (isinstance(value, bool) or value in CALIBRATIONS):
        return {"quantize": None if value is False else {} if value is True else {"calibration": value}}
    if axis == "edge_friendly" and isinstance(value, bool):
        return {"edge_friendly": {} if value else None}
    allowed = {"prune": "ratios in [0, 1)", "int8": f"false, true or a calibration ({', '.join(CALIBRATIONS)})",
               "edge_friendly": "false or true"}[axis]
    raise CompressError(f"sweep.{axis} values are {allowed}, got {value!r}")


def plan(grid_config: dict | str | Path, sweep_dir: Path, *, where: str = "") -> list[Trial]:
    """Every grid point as a resolved, validated run config with its run folder; all problems in one error."""
    from compress.config import ConfigError, merge, migrate, resolve

    axes, base, where = load_grid(grid_config, where)
    at = f"{where}: " if where else ""
    base = migrate(base)
    if base.get("measure") is None or isinstance(base["measure"], dict):
        base["measure"] = {**TRIAL_MEASURE, **(base.get("measure") or {})}  # the base config's keys win
    speed_check_off = "speed_check_runs" not in (base.get("quantize") or {})
    problems, trials = [], {}
    for point in itertools.product(*([(k, v) for v in axes[k]] for k in AXES if k in axes)):
        try:
            data = base
            for axis, value in point:
                data = merge(data, axis_overrides(axis, value))
            if data.get("quantize") is not None and speed_check_off:
                data = merge(data, {"quantize": {"speed_check_runs": 0}})
            cfg = resolve(overrides=data)
        except CompressError as e:
            problems += [at + p for p in getattr(e, "problems", None) or [str(e)]]
            continue
        name = trial_name(cfg)
        trials.setdefault(name, Trial(name, cfg, Path(sweep_dir) / "trials" / name))
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    return list(trials.values())


# ------------------------------------------------------------------------------------------------ the sweep

def run_sweep(grid_config: dict | str | Path, sweep_dir: Path, *, ray_address: str | None = None,
              max_concurrent: int | None = None, max_drop: float | None = None, max_failures: int = 1,
              runs: int = 300, energy_seconds: float = 3.0, log: Callable[[str], None] | None = None) -> dict:
    """Run every grid point of ``grid_config`` (a dict or YAML file with a ``sweep:`` section) not finished yet
    as Ray Tune trials, re-measure all deployed models, write ``sweep.json/.md/.html``; returns sweep.json's dict.

    ``runs``: interleaved batch-1 timings per model in the re-measurement; ``energy_seconds``: each model's energy
    loop there (0: none); ``max_drop``: the recommendation's top-1 budget (default ``sweep_report.DEFAULT_MAX_DROP``).
    """
    from compress import sweep_report
    from compress.console import library_output_to
    from compress.rundir import run_lock

    say = log or (lambda _: None)
    if (max_concurrent is not None and max_concurrent < 1) or max_failures < 0 or runs < 1 or energy_seconds < 0 \
            or (max_drop is not None and max_drop < 0):
        raise CompressError("--max-concurrent and --runs must be at least 1; --max-failures, --energy-seconds and "
                            "--max-drop must not be negative")
    sweep_dir = Path(sweep_dir).absolute()
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise CompressError(f"sweep folder {sweep_dir} is a file: choose a folder with --out")
    trials = plan(grid_config, sweep_dir)
    (sweep_dir / "trials").mkdir(parents=True, exist_ok=True)
    with run_lock(sweep_dir):
        states = {t.name: trial_state(t) for t in trials}
        todo = [t for t in trials if states[t.name] != "finished"]
        if todo:
            _import_ray()  # before anything else: one line on how to install it
        count = {k: sum(s == k for s in states.values()) for k in ("finished", "unfinished", "new")}
        say(f"{len(trials)} trial(s): {count['finished']} finished earlier (reused), {count['unfinished']} to resume, "
            f"{count['new']} to run")
        ray_info, attempts, errors = _run_trials(todo, sweep_dir, ray_address=ray_address,
                                                 max_concurrent=max_concurrent, max_failures=max_failures,
                                                 say=say) if todo else (None, {}, {})
        status = {t.name: "reused" if states[t.name] == "finished" else
                  "ran" if (t.run_dir / "report.json").is_file() else "failed" for t in trials}
        done = [t for t in trials if status[t.name] != "failed"]
        say(f"re-measuring {len(done)} deployed models on this machine, one process, interleaved, batch 1, 1 thread")
        with library_output_to(sweep_dir / "compress.log"):
            measured = sweep_report.remeasure(done, runs=runs, energy_seconds=energy_seconds) if done else None
        summary = sweep_report.summarize(trials, status, attempts, errors, measured, max_drop=max_drop,
                                         ray=ray_info, sweep_dir=sweep_dir)
        sweep_report.write(summary, done, sweep_dir)
    return summary


def _import_ray():
    try:
        import ray
        from ray import tune
    except ImportError:
        raise CompressError(f"compress sweep runs trials with Ray Tune, which is not installed: {INSTALL}") from None
    return ray, tune


def _run_trials(todo: list[Trial], sweep_dir: Path, *, ray_address: str | None, max_concurrent: int | None,
                max_failures: int, say: Callable[[str], None]) -> tuple[dict, dict[str, int], dict[str, str]]:
    """``todo`` as one Tune experiment: the Ray setup, attempts per trial, and failed trials' errors (one line)."""
    from compress import sweep_report
    from compress.config import to_dict

    ray, tune = _import_ray()
    experiment = sweep_dir / "ray" / f"tune-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M%S}"
    fail_once = {n.strip() for n in os.environ.get(FAIL_ONCE_ENV, "").split(",") if n.strip()}
    with _ray_session(sweep_dir, ray_address):
        total = int(ray.cluster_resources().get("CPU", 1))
        per_node = max([int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] or [total])
        concurrent = max(1, min(max_concurrent or total, len(todo), total))
        cpus = max(1, min(per_node, total // concurrent))  # an equal share of the CPUs, as torch threads too
        info = {"address": ray_address or "local", "cluster_cpus": total, "cpus_per_trial": cpus,
                "max_concurrent": max_concurrent, "max_failures": max_failures, "experiment": str(experiment)}
        say(f"Ray Tune on {total} CPUs ({info['address']}): {cpus} CPU(s) and torch thread(s) per trial, up to "
            f"{concurrent} at a time; Ray's own logs go to {sweep_dir / 'ray'}")
        specs = [{"name": t.name, "run_dir": str(t.run_dir), "config": to_dict(t.cfg), "cpus": cpus,
                  "attempts": str(experiment / "attempts" / f"{t.name}.txt"), "fail_once": t.name in fail_once,
                  "cache": os.environ.get("COMPRESS_CACHE")} for t in todo]
        tuner = tune.Tuner(
            tune.with_resources(_trial_main, {"cpu": cpus}), param_space={"trial": tune.grid_search(specs)},
            # reuse_actors: a trial's Ray worker runs the next trial too, without importing torch and compress again
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, trial_dirname_creator=_dirname,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name=experiment.name, storage_path=str(experiment.parent), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=max_failures),
                                      callbacks=[sweep_report.announcer(tune, say)]))
        with sweep_report.quiet_driver(sweep_dir / "ray" / "driver.log"):
            results = tuner.fit()
    errors = {r.config["trial"]["name"]: sweep_report.one_line(r.error) for r in results if r.error is not None}
    return info, {s["name"]: _attempts(Path(s["attempts"])) for s in specs}, errors


def _dirname(trial: Any) -> str:  # Tune's folder for the trial: its name
    return trial.config["trial"]["name"]


def _attempts(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


@contextmanager
def _ray_session(sweep_dir: Path, address: str | None) -> Iterator[None]:
    """Ray on this machine's CPUs, or the cluster at ``address``; no dashboard, workers' output off the terminal,
    a local Ray's temp files under ``SWEEP_DIR/ray/tmp``. A Ray the caller already started is used as it is."""
    import logging
    import tempfile

    ray, _ = _import_ray()
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage telemetry from a local tool
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    short = None
    if address is None:
        temp = sweep_dir / "ray" / "tmp"
        temp.mkdir(parents=True, exist_ok=True)
        # Ray's sockets live there, and a socket path has at most 107 bytes: reach a deep folder by a short link.
        short = Path(tempfile.mkdtemp(prefix="compress-ray-")) / "t"
        short.symlink_to(temp, target_is_directory=True)
        kwargs.update(include_dashboard=False, _temp_dir=str(short))
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise CompressError(f"cannot start or reach Ray{' at ' + address if address else ''}: "
                            f"{' '.join(str(e).split())[:200]}") from None
    try:
        yield
    finally:
        ray.shutdown()
        if short is not None:
            short.unlink()
            short.parent.rmdir()


# ------------------------------------------------------------------------------------------------ one trial

def _trial_main(params: dict) -> None:
    """One Tune trial, in a Ray worker: an ordinary ``compress run`` into the trial's folder with torch threads
    pinned to the trial's CPU share. A retry resumes the folder from its last finished step."""
    import torch
    from ray import tune

    from compress import pipeline
    from compress.config import RunConfig, from_dict
    from compress.rundir import prepare_run_dir

    spec = params["trial"]
    if spec["cache"]:
        os.environ["COMPRESS_CACHE"] = spec["cache"]
    torch.set_num_threads(spec["cpus"])
    log = Path(spec["attempts"])  # one line per attempt: the counter sweep.json reports
    log.parent.mkdir(parents=True, exist_ok=True)
    attempt = _attempts(log) + 1
    with open(log, "a") as f:
        f.write(f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} pid {os.getpid()}\n")
    cfg, run_dir = from_dict(RunConfig, spec["config"]), Path(spec["run_dir"])
    baseline = json.dumps({k: spec["config"][k] for k in BASELINE_KEYS}, sort_keys=True)
    with prepare_run_dir(run_dir), _TrialHooks(baseline, run_dir, fail=spec["fail_once"] and attempt == 1) as hooks:
        report = pipeline.run(cfg, run_dir, progress=hooks)
    tune.report({"top1_pct": report.deployed().metrics.top1_pct, "attempt": attempt})


class _TrialHooks:
    """The progress hooks a trial hands the pipeline. They hold a lock per baseline until the baseline is ready, so
    trials that share one train it once and the others load it from the cache; and, for the test hook, fail when a
    step starts after one was recorded (so the retry resumes). Every other hook is silent."""

    def __init__(self, baseline: str, run_dir: Path, *, fail: bool):
        from compress.core import cache_dir

        self.lock = cache_dir() / "locks" / f"baseline-{hashlib.sha256(baseline.encode()).hexdigest()[:20]}.lock"
        self.run_dir, self.fail, self._fd = run_dir, fail, None

    def __enter__(self) -> "_TrialHooks":
        import fcntl

        self.lock.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.lock, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # the kernel drops it, too, if the trial's process dies
        return self

    def release(self, *_: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    __exit__ = step_done = resumed = release  # step_done, resumed: the baseline is ready (trained, loaded, restored)

    def step_started(self, name: str, *_: Any) -> None:
        if name != "baseline":
            self.release()
        if self.fail and (self.run_dir / "progress.json").is_file():
            self.fail = False
            raise RuntimeError(f"{FAIL_ONCE_ENV} names this trial: its first attempt fails after a recorded step")

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None


# ------------------------------------------------------------------------------------------------ command line

def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``compress sweep`` to the CLI: ``sweep.add_parser(sub)``, then ``sweep.main(args)`` for it."""
    p = subparsers.add_parser(
        "sweep", help="a grid of runs as Ray Tune trials; Pareto frontier and a recommendation",
        description="Run every combination of MODELs, --prune ratios, --int8 options and --edge-friendly as Ray "
        "Tune trials (each an ordinary run folder in OUT/trials/), re-measure all deployed models together, and "
        f"write sweep.html/.md/.json with the Pareto frontier and a recommended run. Needs Ray: {INSTALL}",
        epilog=f"examples:\n  {EXAMPLE}\n  compress sweep --config sweep.yaml --out runs/sweep --ray-address auto",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("models", nargs="*", metavar="MODEL", help="models to try (see `compress list`)")
    a("--config", type=Path, help="YAML: a run config for every trial plus a sweep: section, e.g. sweep: {model: "
      "[...], prune: [0, 0.5], int8: [false, true], edge_friendly: [false, true]}; flags win")
    a("--out", type=Path, help="sweep folder (default runs/sweep_<data>); a second sweep into it reuses finished "
      "trials and resumes unfinished ones")
    a("--prune", type=float, nargs="+", metavar="RATIO", help="prune ratios to try (0: no pruning)")
    a("--int8", nargs="*", choices=("off", "on", "both", *CALIBRATIONS), metavar="OPTION", help="INT8 options to "
      f"try: off, on (default calibration), both (= off on), or calibrations ({', '.join(CALIBRATIONS)}); bare: on")
    a("--edge-friendly", nargs="*", choices=("off", "on", "both"), metavar="OPTION", help="off, on or both; bare: on")
    a("--data", help="fashion-mnist, digits, cifar10, or an image folder (every trial)")
    a("--epochs", type=int, metavar="N", help="baseline training epochs (every trial)")
    a("--finetune-epochs", type=int, metavar="N", help="recovery epochs of pruned or edge-friendly trials")
    a("--max-concurrent", type=int, metavar="N", help="at most N trials at a time (default: one per CPU); each "
      "trial gets an equal share of the CPUs, as torch threads")
    a("--ray-address", metavar="ADDR", help="join this Ray cluster (default: start Ray on this machine); OUT must "
      "then be at the same path on every node")
    a("--max-failures", type=int, default=1, metavar="N", help="retries of a failed trial (default 1)")
    a("--max-drop", type=float, metavar="POINTS", help="recommend the fastest trial within POINTS top-1 points of "
      "the best baseline (default 1.0)")
    a("--runs", type=int, default=300, metavar="N", help="interleaved batch-1 timings per model when re-measuring "
      "(default 300)")
    a("--energy-seconds", type=float, default=3.0, metavar="S", help="each model's energy loop when re-measuring; "
      "0 skips energy (default 3)")
    a("--quiet", action="store_true", help="no progress lines")
    return p


def grid_from_args(args: argparse.Namespace) -> dict:
    """``--config``'s YAML (if any) with the flags on top: a grid config for :func:`run_sweep`."""
    from compress.config import load_yaml, merge

    grid = load_yaml(args.config) if args.config else {}
    axes = grid.pop("sweep", None) or {}
    if not isinstance(axes, dict):
        raise CompressError(f"{args.config}: sweep must be a mapping like {{prune: [0, 0.5]}}, got {axes!r}")
    flags = {"data": args.data, "train": {"epochs": args.epochs}, "finetune": {"epochs": args.finetune_epochs}}
    grid = merge(grid, {k: v for k, v in flags.items() if v not in (None, {"epochs": None})})
    for axis, values in (("model", args.models or None), ("prune", args.prune),
                         ("int8", _options(args.int8)), ("edge_friendly", _options(args.edge_friendly))):
        if values is not None:
            axes[axis] = values
    if "model" not in axes and "model" not in grid:
        raise CompressError("name at least one MODEL (or model: or sweep: {model: [...]} in --config)")
    return {**grid, "sweep": axes}


def _options(words: list[str] | None) -> list | None:
    meaning = {"off": [False], "on": [True], "both": [False, True]}
    return None if words is None else list(dict.fromkeys(v for w in words or ["on"] for v in meaning.get(w, [w])))


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    """``compress sweep`` (parsed, or its arguments after ``sweep``): 0 when every trial finished, 1 when one failed
    for good, 2 with one line per problem."""
    from compress import sweep_report

    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="compress")
        add_parser(parser.add_subparsers(dest="command", required=True))
        try:
            args = parser.parse_args(["sweep", *(args or [])])
        except SystemExit as e:
            return int(e.code or 0)
    say = None if args.quiet else (lambda m: print(f"compress sweep: {m}", file=sys.stderr, flush=True))
    try:
        grid = grid_from_args(args)
        out = args.out or Path("runs") / f"sweep_{Path(str(grid.get('data', 'fashion-mnist'))).name or 'data'}"
        plan(grid, out, where=str(args.config or ""))  # problems name the --config file, before any work
        summary = run_sweep(grid, out, ray_address=args.ray_address, max_concurrent=args.max_concurrent,
                            max_drop=args.max_drop, max_failures=args.max_failures, runs=args.runs,
                            energy_seconds=args.energy_seconds, log=say)
    except CompressError as e:
        for problem in getattr(e, "problems", None) or [str(e)]:
            print(f"compress: error: {' '.join(str(problem).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("compress: interrupted; finished trials are kept, and the same command continues", file=sys.stderr)
        return 130
    print(sweep_report.terminal(summary, out))
    return 1 if summary["failed"] else 0
