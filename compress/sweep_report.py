"""A sweep's trial folders and what they report: each trial's name and state, one line per trial event while Ray
Tune runs (Ray's own output goes to ``SWEEP_DIR/ray/driver.log``), then every deployed model re-measured on one
machine, the Pareto frontier, the recommended run, and ``sweep.json``, ``sweep.md`` and ``sweep.html`` (plus
``compare/``, written by :func:`compress.compare.compare` over the trial folders).

The latency a trial measured itself ran beside other trials and is only kept for reference (``latency_ms_in_trial``).
The figures that decide are re-measured serially on the driver: all deployed models timed interleaved with
:func:`compress.measure.interleaved` (batch 1, 1 thread, as the benchmarks time them), then each model's energy
loop alone, with the CPU recorded.

Pareto frontier: a trial is on it when no other trial is at least as accurate (top-1), at least as fast
(re-measured median latency) and at least as small (file size), and strictly better in one of the three.

Recommendation (:data:`RULE`): among the trials whose top-1 is at least the best baseline's top-1 minus ``max_drop``
points (the best baseline: the highest step-0 top-1 of all trials), the fastest by re-measured median latency;
trials within :data:`SAME_SPEED` of that latency count as equally fast, and of those the smallest file wins, then
the more accurate. That trial is always on the frontier.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from compress.errors import CompressError

if TYPE_CHECKING:
    from compress.config import RunConfig

DEFAULT_MAX_DROP = 1.0  # top-1 points
SAME_SPEED = 0.03  # latencies within 3% are one speed: closer than run-to-run noise on a busy machine
RULE = ("the fastest trial (re-measured median latency) whose top-1 is at least the best baseline's top-1 minus "
        "{max_drop}; trials within {same:.0%} of that latency count as equally fast, and of those the "
        "smallest file wins, then the more accurate")
FIGURE = "sweep_accuracy_latency.png"
STAR, CHECK = "★", "✓"


@dataclass(frozen=True)
class Trial:
    name: str
    cfg: "RunConfig"
    run_dir: Path


def trial_name(cfg: "RunConfig") -> str:
    """``<model>_prune<ratio>_<fp32|int8-<calibration>>[_edge]``: what the trial is, readable in a listing."""
    ratio = cfg.prune.ratio if cfg.prune is not None else 0
    precision = f"int8-{cfg.quantize.calibration}" if cfg.quantize is not None else "fp32"
    return f"{cfg.model}_prune{ratio:g}_{precision}" + ("_edge" if cfg.edge_friendly is not None else "")


def trial_state(trial: Trial) -> str:
    """"finished" (report.json with this config: reused), "unfinished" (resumed) or "new"; a folder holding
    another config is an error."""
    from compress.config import differences, resolve

    d = trial.run_dir
    finished = (d / "report.json").is_file()
    if not (finished or (d / "progress.json").is_file()):
        return "new"
    saved = resolve(d / "config.yaml") if (d / "config.yaml").is_file() else None
    if saved != trial.cfg:
        def show(v: Any) -> str:
            return "off" if v is None else "on" if isinstance(v, dict) else repr(v)

        diff = "no config.yaml" if saved is None else ", ".join(
            f"{k} {show(a)} there, {show(b)} now" for k, a, b in differences(saved, trial.cfg)[:3])
        raise CompressError(f"{d} holds a {'finished' if finished else 'unfinished'} run with another config "
                            f"({diff}): choose another --out for this grid, or delete that trial folder")
    return "finished" if finished else "unfinished"


# ------------------------------------------------------------------------------------------------ while trials run

def announcer(tune: Any, say: Callable[[str], None]) -> Any:
    """A Tune callback that says one line when a trial starts, is retried, finishes or fails for good."""
    def name(trial: Any) -> str:
        return trial.config["trial"]["name"]

    class Announce(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            say(f"trial {name(trial)}: started")

        def on_trial_recover(self, iteration, trials, trial, **info):
            say(f"trial {name(trial)}: failed, retrying (the retry resumes its run folder)")

        def on_trial_complete(self, iteration, trials, trial, **info):
            top1 = (trial.last_result or {}).get("top1_pct")
            say(f"trial {name(trial)}: finished" + (f", top-1 {top1:.2f}%" if top1 is not None else ""))

        def on_trial_error(self, iteration, trials, trial, **info):
            say(f"trial {name(trial)}: failed, no retries left (details in {trial.path})")

    return Announce()


def one_line(error: BaseException) -> str:
    """A failed trial's error for sweep.json and the terminal: the trial's own exception, on one line."""
    cause = getattr(error, "cause", None) or error  # Ray wraps it
    return f"{type(cause).__name__}: {' '.join(str(cause).split())[-300:]}"


@contextmanager
def quiet_driver(log_file: Path) -> Iterator[None]:
    """Tune's tables, trial error tracebacks and Ray's driver-side log lines go to ``log_file``, not the terminal."""
    import contextlib
    import logging

    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    loggers = [logging.getLogger("ray")] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
                                            if n.startswith("ray.")]
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers = [handler] if lg.handlers or lg.name == "ray" else []
        lg.propagate = lg.name != "ray"
    try:
        with open(log_file, "a") as out, contextlib.redirect_stdout(out):
            yield
    finally:
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
        handler.close()



# ------------------------------------------------------------------------------------------------ after the trials

def remeasure(trials: list[Trial], *, runs: int, energy_seconds: float) -> dict:
    """Batch-1, 1-thread latency of every trial's deployed ONNX model, interleaved in this process, then each
    model's energy loop alone (``energy_seconds``; 0 skips it)."""
    import numpy as np

    from compress.energy import EnergyMeter
    from compress.host import cpu_record
    from compress.measure import MeasureConfig, interleaved, latency_loop, onnx_call

    calls = {}
    for t in trials:
        x = np.random.default_rng(0).standard_normal((1, 3, t.cfg.input_size, t.cfg.input_size), dtype=np.float32)
        calls[t.name] = onnx_call(deployed_onnx(t.run_dir), x, 1)
    times = interleaved(calls, runs=runs, block=5, warmup=10)
    models = {name: {"latency_ms_median": float(np.median(ts)) * 1e3,
                     "latency_ms_p90": float(np.quantile(ts, 0.9)) * 1e3, "latency_runs": len(ts),
                     "energy_per_inference_j": None, "energy_method": "not re-measured (energy_seconds 0)"}
              for name, ts in times.items()}
    if energy_seconds > 0:
        cfg = trials[0].cfg
        loop = MeasureConfig(warmup_runs=10, min_runs=100, min_seconds=energy_seconds)
        with EnergyMeter(country=cfg.country, power_watts=cfg.power_watts) as meter:
            for name, call in calls.items():
                ts, reading = latency_loop(lambda _x, c=call: c(), None, loop, meter, f"{name}/energy")
                models[name]["energy_per_inference_j"] = (reading.energy_j / len(ts)
                                                          if reading.energy_j is not None else None)
                models[name]["energy_method"] = reading.method
    return {"cpu": cpu_record(), "batch": 1, "threads": 1, "runs": runs, "block": 5,
            "energy_seconds": energy_seconds, "models": models}


def deployed_onnx(run_dir: Path) -> Path:
    """The ONNX file a finished run deploys: its deployed step's artifact (the bundle's model.onnx)."""
    from compress.records import RunReport

    step = RunReport.load(run_dir).deployed()
    return run_dir / step.artifact if step.kind == "onnx" else run_dir / "edge" / "model.onnx"


def pareto(points: list[tuple[float, float, float]]) -> list[bool]:
    """For each (top-1, latency, size): True when no other point is at least as good in all three and strictly
    better in one. Equal points are all on the frontier."""
    return [not any(a2 >= a and l2 <= lat and s2 <= s and (a2, l2, s2) != (a, lat, s) for a2, l2, s2 in points)
            for a, lat, s in points]


def recommend(rows: list[dict], max_drop: float) -> tuple[str | None, str]:
    """``(trial name or None, why)`` by :data:`RULE`, over finished trials' rows (sweep.json's ``trials``)."""
    from compress.render import fmt_bytes

    done = [r for r in rows if r.get("top1_pct") is not None]
    if not done:
        return None, "no trial finished"
    best = max(r["baseline_top1_pct"] for r in done)
    floor = best - max_drop
    eligible = [r for r in done if r["top1_pct"] >= floor]
    if not eligible:
        return None, (f"no trial reaches {floor:.2f}% top-1 (the best baseline's {best:.2f}% minus "
                      f"{_points(max_drop)}): allow a larger --max-drop, or recover more (more fine-tuning epochs)")
    fastest = min(r["latency_ms_median"] for r in eligible)
    near = [r for r in eligible if r["latency_ms_median"] <= fastest * (1 + SAME_SPEED)]
    pick = min(near, key=lambda r: (r["size_bytes"], -r["top1_pct"], r["latency_ms_median"]))
    return pick["name"], (f"{pick['name']}: {pick['top1_pct']:.2f}% top-1 (at least {floor:.2f}%: the best "
                          f"baseline's {best:.2f}% minus {_points(max_drop)}), {pick['latency_ms_median']:.3f} ms, "
                          f"{fmt_bytes(pick['size_bytes'])}")


def summarize(trials: list[Trial], status: dict[str, str], attempts: dict[str, int], errors: dict[str, str],
              measured: dict | None, *, max_drop: float | None, ray: dict | None, sweep_dir: Path) -> dict:
    """sweep.json: one row per trial (its grid point, status, attempts, deployed model's numbers), the frontier,
    the recommendation and how everything was measured."""
    from compress.records import RunReport

    rows = []
    for t in trials:
        c = t.cfg
        row = {"name": t.name, "run_dir": str(t.run_dir.relative_to(sweep_dir)), "status": status[t.name],
               "attempts": attempts.get(t.name, 0), "model": c.model,
               "prune_ratio": c.prune.ratio if c.prune is not None else 0.0,
               "int8": c.quantize.calibration if c.quantize is not None else None,
               "edge_friendly": c.edge_friendly is not None}
        if status[t.name] == "failed":
            row["error"] = errors.get(t.name, "the trial left no report.json")
        else:
            report = RunReport.load(t.run_dir)
            step = report.deployed()
            row.update(deployed_step=step.step, top1_pct=step.metrics.top1_pct,
                       baseline_top1_pct=report.baseline.metrics.top1_pct, size_bytes=step.metrics.size_bytes,
                       macs=step.metrics.macs, latency_ms_in_trial=step.metrics.latency_ms_median,
                       **measured["models"][t.name])
        rows.append(row)
    done = [r for r in rows if "top1_pct" in r]
    for r, flag in zip(done, pareto([(r["top1_pct"], r["latency_ms_median"], r["size_bytes"]) for r in done])):
        r["frontier"] = flag
    budget = DEFAULT_MAX_DROP if max_drop is None else max_drop
    name, why = recommend(rows, budget)
    measurement = {k: v for k, v in (measured or {}).items() if k != "models"}
    return {"schema_version": 1, "trials": rows, "frontier": [r["name"] for r in done if r["frontier"]],
            "recommended": name, "recommendation": why, "max_drop": budget,
            "rule": RULE.format(max_drop=_points(budget), same=SAME_SPEED),
            "best_baseline_top1_pct": max((r["baseline_top1_pct"] for r in done), default=None),
            "failed": [r["name"] for r in rows if r["status"] == "failed"], "remeasured": measurement, "ray": ray,
            "compare": "compare/compare.html" if done else None}


def write(summary: dict, trials: list[Trial], sweep_dir: Path) -> None:
    """sweep.json, and when a trial finished: compare/ (compress.compare over the trial folders), the
    accuracy-latency figure with the re-measured latencies, sweep.md and sweep.html."""
    from compress import plots
    from compress.checkpoint import atomic_write
    from compress.compare import compare, pareto as pareto_2d

    atomic_write(sweep_dir / "sweep.json", lambda p: p.write_text(json.dumps(summary, indent=2)))
    if not trials:
        return
    compare([t.run_dir for t in trials], sweep_dir / "compare")
    done = [r for r in summary["trials"] if "top1_pct" in r]
    flags = pareto_2d([(r["top1_pct"], r["latency_ms_median"]) for r in done])  # the figure has two axes
    points = [{"label": r["name"], "top1": r["top1_pct"], "latency_ms": r["latency_ms_median"], "frontier": f}
              for r, f in zip(done, flags)]
    png = plots.png(plots.compare_accuracy_latency(points))
    atomic_write(sweep_dir / FIGURE, lambda p: p.write_bytes(png))
    atomic_write(sweep_dir / "sweep.md", lambda p: p.write_text(markdown(summary), encoding="utf-8"))
    atomic_write(sweep_dir / "sweep.html", lambda p: p.write_text(html(summary, png), encoding="utf-8"))


HEADERS = ["trial", "Pareto", "pick", "status", "top-1 %", "Δ vs baseline", "size", "latency p50 ms",
           "latency p90 ms", "energy/inf", "attempts"]


def table_rows(summary: dict) -> list[list[str]]:
    from compress.render import fmt_bytes, fmt_energy

    out = []
    for r in summary["trials"]:
        if "top1_pct" not in r:
            out.append([r["name"], "", "", r["status"], *["n/a"] * 6, str(r["attempts"])])
            continue
        out.append([r["name"], STAR if r["frontier"] else "", CHECK if r["name"] == summary["recommended"] else "",
                    r["status"], f"{r['top1_pct']:.2f}", f"{r['top1_pct'] - r['baseline_top1_pct']:+.2f} pt",
                    fmt_bytes(r["size_bytes"]), f"{r['latency_ms_median']:.3f}", f"{r['latency_ms_p90']:.3f}",
                    fmt_energy(r["energy_per_inference_j"]), str(r["attempts"])])
    return out


def method(summary: dict) -> str:
    m = summary["remeasured"]
    if not m:
        return "No trial finished, so nothing was measured."
    return (f"Latency re-measured after all trials, serially on this machine ({m['cpu']['cpu']}, "
            f"{m['cpu']['cores']} cores): all deployed models interleaved in blocks of {m['block']}, {m['runs']} "
            f"batch-1 runs each, {m['threads']} thread. " + (f"Energy: each model's loop alone for "
            f"{m['energy_seconds']:g} s ({_energy_method(summary)}). " if m["energy_seconds"] else "Energy: not "
            "re-measured (--energy-seconds 0). ") + "top-1: the full test split, from each trial's report.json.")


def legend(summary: dict) -> str:
    return (f"{STAR} = on the Pareto frontier: no other trial is at least as accurate, as fast and as small, and "
            f"better in one. {CHECK} = recommended: {summary['rule']}. Δ: against the trial's own baseline.")


def markdown(summary: dict) -> str:
    from compress.render import markdown_table

    n = len(summary["trials"])
    lines = [f"# compress sweep: {n} trial{'s' if n != 1 else ''}", "",
             f"**Recommended:** {summary['recommendation']}" if summary["recommended"]
             else f"**No recommendation:** {summary['recommendation']}", "",
             f"**Pareto frontier:** {', '.join(summary['frontier']) or 'none'}", "",
             markdown_table(HEADERS, table_rows(summary), right_from=4), "", legend(summary), "", method(summary), "",
             f"![accuracy vs latency, re-measured]({FIGURE})", "",
             f"The figure's orange line is the accuracy-latency frontier; the table's {STAR} also counts file size.",
             ""]
    lines += [f"- **{r['name']}** failed after {r['attempts']} attempt(s): {r['error']}" for r in summary["trials"]
              if r["status"] == "failed"]
    lines += ["", f"Side by side with each run's own numbers: [compare/compare.html]({summary['compare']}) (its "
              "latencies were measured inside concurrent trials; the table above has the re-measured ones).",
              "", "Each trial is a run folder: replay one with `compress run --config trials/<trial>/config.yaml`."]
    return "\n".join(lines) + "\n"


PAGE = """{% extends "base.html.j2" %}
{% from "figures.html.j2" import figure, definitions, warnings %}
{% block body %}
<header><p class="eyebrow">compress sweep</p><h1>{{ heading }}</h1><p class="sub">{{ recommendation }}</p></header>
{{ warnings(failed, "Failed trials") }}
<section><h2>Trials</h2><p class="hint">{{ legend }}</p>
<div class="scroll"><table><thead><tr>{% for h in headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>{% for r in rows %}<tr{% if r[1] %} class="final"{% endif %}><th scope="row">{{ r[0] }}</th>{% for c in r[1:] %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</tbody></table></div>
<p class="hint">{{ method }}</p></section>
<section><div class="figures">{{ figure(fig) }}</div></section>
<section><h2>Run folders</h2>{{ definitions(runs) }}
<p class="hint">Side by side with each run's own numbers (latencies measured inside concurrent trials): {{ compare }} in the sweep folder. This page refers to no other file, so it can travel alone.</p></section>
<footer>top-1 and size come from the trials' report.json files; latency and energy were re-measured after the sweep</footer>
{% endblock %}
"""


def html(summary: dict, png: bytes) -> str:
    import jinja2

    from compress.html import Plot

    env = jinja2.Environment(loader=jinja2.PackageLoader("compress", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    css = (Path(__file__).parent / "templates" / "style.css").read_text()
    fig = Plot("sweep", "Accuracy vs re-measured latency", "Each trial's deployed model; the orange line is the "
               "accuracy-latency frontier (the table's ★ also counts file size).", png, wide=True).item(file=FIGURE)
    n = len(summary["trials"])
    return env.from_string(PAGE).render(
        css=css, title=f"compress sweep: {n} trials", heading=f"{n} trial{'s' if n != 1 else ''} swept",
        recommendation=("Recommended: " if summary["recommended"] else "No recommendation: ")
        + summary["recommendation"], failed=[(r["name"], r["error"]) for r in summary["trials"]
                                             if r["status"] == "failed"],
        legend=legend(summary), headers=HEADERS, rows=table_rows(summary), method=method(summary), fig=fig,
        runs=[(r["name"], f"{r['run_dir']} · replay: compress run --config {r['run_dir']}/config.yaml")
              for r in summary["trials"]], compare=summary["compare"])


def terminal(summary: dict, sweep_dir: Path) -> str:
    """What ``compress sweep`` prints at the end: the table, the recommendation and where the reports are."""
    from compress.render import markdown_table

    head = (f"Recommended: {summary['recommendation']}" if summary["recommended"]
            else f"No recommendation: {summary['recommendation']}")
    failed = [f"{r['name']} failed after {r['attempts']} attempt(s): {r['error']} (run the same command again to "
              "retry it; finished trials are reused)" for r in summary["trials"] if r["status"] == "failed"]
    return "\n".join([markdown_table(HEADERS, table_rows(summary), right_from=4), "", legend(summary), "", head,
                      *failed, f"Sweep folder: {sweep_dir}  (sweep.html, sweep.md, sweep.json, trials/, compare/)"])


def _energy_method(summary: dict) -> str:
    methods = {r.get("energy_method") for r in summary["trials"] if r.get("energy_method")}
    return "; ".join(sorted(methods)) or "n/a"


def _points(drop: float) -> str:
    return f"{drop:g} point" + ("" if drop == 1 else "s")
