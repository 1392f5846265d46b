"""Run reports: the records (``RunReport``/``StepReport``) and their renderings (JSON, Markdown).

``report.json`` is the source of truth; every rendering is derived from it, and deltas against the
baseline are computed when rendering, never stored. Its layout is documented in the README
("report.json") and versioned by ``schema_version``.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from compress.errors import CompressError

SCHEMA_VERSION = 1


@dataclass
class StepReport:
    step: str
    kind: str  # "torch" or "onnx"
    stage: dict  # the stage's own config (dataclasses.asdict)
    artifact: str  # path relative to the run folder
    artifact_sha256: str
    metrics: dict  # compress.measure.Metrics as a dict
    confusion: list[list[int]]  # test split; rows = true class, columns = predicted
    work: dict  # the stage's own work: seconds, energy_j, co2_g, energy_method
    notes: dict = field(default_factory=dict)


@dataclass
class RunReport:
    config: dict
    environment: dict
    dataset: dict
    model: str
    steps: list[StepReport] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    created_utc: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    carbon: dict = field(default_factory=dict)

    def finish(self) -> None:
        self.carbon = carbon_break_even(self)

    def step(self, name: str) -> StepReport:
        return next(s for s in self.steps if s.step == name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "RunReport":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise CompressError(f"report schema_version {d.get('schema_version')!r} is not {SCHEMA_VERSION}: "
                                "re-run with this version of compress")
        d = dict(d)
        d["steps"] = [StepReport(**s) for s in d.get("steps", [])]
        return cls(**d)

    @classmethod
    def load(cls, path: Path) -> "RunReport":
        path = Path(path)
        if path.is_dir():
            path = path / "report.json"
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise CompressError(f"{path} not found: give a run folder written by `compress run`") from None
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as e:
            raise CompressError(f"{path} is not a compress report ({type(e).__name__}): re-run the job") from None


def carbon_break_even(report: RunReport) -> dict:
    """CO2 spent compressing ÷ CO2 saved per inference = inferences until compression pays for itself.

    Compressing counts every stage's own work after the baseline (pruning, fine-tuning, export,
    quantization) and, separately, the baseline training, which a user pays for either way.
    """
    if len(report.steps) < 2:
        return {}
    base, final = report.steps[0], report.steps[-1]
    spent = sum(s.work.get("co2_g") or 0.0 for s in report.steps[1:])
    original = base.notes.get("original_training") or {}  # a cached baseline: what training it once cost
    training = (original.get("co2_g") if base.notes.get("cache_hit") else base.work.get("co2_g")) or 0.0
    b, f = base.metrics.get("co2_per_inference_g"), final.metrics.get("co2_per_inference_g")
    saved = (b - f) if (b is not None and f is not None) else None
    out = {
        "compression_co2_g": spent, "baseline_training_co2_g": training,
        "co2_per_inference_g_baseline": b, "co2_per_inference_g_final": f, "saved_co2_g_per_inference": saved,
        "break_even_inferences": (spent / saved) if saved and saved > 0 else None,
        "break_even_inferences_with_training": ((spent + training) / saved) if saved and saved > 0 else None,
        "energy_method": final.metrics.get("energy_method"),
        "definition": "break_even_inferences = compression_co2_g / saved_co2_g_per_inference; "
                      "null when the final model saves nothing per inference",
    }
    return out


def environment(device: str, threads: int) -> dict:
    import importlib.metadata as md

    from compress.quantize import cpu_flags

    versions = {}
    for pkg in ("compress", "torch", "torchvision", "onnx", "onnxruntime", "torch-pruning", "codecarbon", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    import os

    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "asimd", "asimddp", "i8mm"})
    return {
        "cpu": _cpu_name(), "cpu_flags": flags, "cores": os.cpu_count(), "machine": platform.machine(),
        "os": platform.platform(), "python": platform.python_version(), "train_device": device,
        "measure_device": "cpu", "measure_threads": threads, "versions": versions,
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------- rendering

COLUMNS = [  # (header, metric key, format, lower is better)
    ("top-1 %", "top1_pct", "{:.2f}", False),
    ("size", "size_bytes", "bytes", True),
    ("params", "params", "count", True),
    ("MACs", "macs", "count", True),
    ("latency ms (p50/p90)", "latency_ms_median", "latency", True),
    ("img/s", "throughput_ips", "{:,.0f}", False),
    ("energy/inf", "energy_per_inference_j", "energy", True),
]


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def fmt_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def fmt_energy(j: float | None) -> str:
    if j is None:
        return "n/a"
    for unit, mult in (("J", 1), ("mJ", 1e3), ("µJ", 1e6)):
        if abs(j) * mult >= 1 or unit == "µJ":
            return f"{j * mult:.2f} {unit}"
    return str(j)


def fmt_co2(g: float | None) -> str:
    if g is None:
        return "n/a"
    for unit, mult in (("g", 1), ("mg", 1e3)):
        if abs(g) * mult >= 1:
            return f"{g * mult:.3g} {unit}"
    return f"{g * 1e6:.3g} µg"


def cell(step: StepReport, key: str, kind: str) -> str:
    m = step.metrics
    v = m.get(key)
    if v is None:
        return "n/a"
    if kind == "bytes":
        return fmt_bytes(v)
    if kind == "count":
        return fmt_count(v)
    if kind == "latency":
        p90 = m.get("latency_ms_p90")
        return f"{v:.3f} / {p90:.3f}" if p90 is not None else f"{v:.3f} / n/a"
    if kind == "energy":
        return fmt_energy(v)
    return kind.format(v)


def delta(step: StepReport, base: StepReport, key: str) -> str:
    """Change against the baseline: points for accuracy, a ratio (×) for the rest."""
    v, b = step.metrics.get(key), base.metrics.get(key)
    if v is None or b is None or step is base:
        return ""
    if key == "top1_pct":
        return f"{v - b:+.2f} pt"
    if not v:
        return ""
    better, worse = {"latency_ms_median": ("faster", "slower"), "throughput_ips": ("faster", "slower")}.get(
        key, ("smaller", "larger") if key in ("size_bytes", "params", "macs") else ("less", "more"))
    ratio = (v / b) if key == "throughput_ips" else (b / v)
    return f"{ratio:.2f}× {better}" if ratio >= 1 else f"{1 / ratio:.2f}× {worse}"


def render_markdown(report: RunReport) -> str:
    base = report.steps[0]
    final = report.steps[-1]
    lines = [f"# compress run: {report.model} on {report.dataset['name']}", ""]
    lines.append(verdict(report))
    lines += ["", "| step | " + " | ".join(h for h, *_ in COLUMNS) + " | work time | work CO2 |",
              "|---|" + "---:|" * (len(COLUMNS) + 2)]
    for s in report.steps:
        cells = []
        for _, key, kind, _ in COLUMNS:
            d = delta(s, base, key)
            cells.append(cell(s, key, kind) + (f" ({d})" if d else ""))
        w = s.work
        work_time = "cached" if s.notes.get("cache_hit") else f"{w['seconds']:.1f} s"
        lines.append(f"| {s.step} | " + " | ".join(cells) + f" | {work_time} | {fmt_co2(w.get('co2_g'))} |")
    m = final.metrics
    lines += ["", f"Latency: batch {m['latency_batch']}, {m['threads']} thread(s), median and p90 of "
              f"{m['latency_runs']} runs after warm-up, on the CPU. Throughput at batch {m['throughput_batch']}. "
              f"Accuracy on the full held-out split ({report.dataset['test_images']} images).",
              f"Energy per inference: {m['energy_method']}.", ""]
    c = report.carbon
    if c:
        be = c.get("break_even_inferences")
        lines.append(f"Carbon: compressing emitted {fmt_co2(c['compression_co2_g'])} "
                     f"(baseline training {fmt_co2(c['baseline_training_co2_g'])}). "
                     + (f"It pays for itself after {be:,.0f} inferences." if be else
                        "The final model saves no CO2 per inference, so compression never pays back in carbon."))
    env = report.environment
    lines += ["", f"Environment: {env['cpu']} ({env['cores']} cores, {env['machine']}), Python {env['python']}, "
              + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v) + "."]
    notes = [(s.step, k, v) for s in report.steps for k, v in s.notes.items() if k not in ("cache",)]
    if notes:
        lines += ["", "## Notes", ""] + [f"- **{step}** {k}: {v}" for step, k, v in notes]
    return "\n".join(lines) + "\n"


def verdict(report: RunReport) -> str:
    """One line on the step the bundle holds: the last one, or the one ``--max-drop`` chose."""
    base, last = report.steps[0], report.steps[-1]
    final = next((s for s in report.steps if s.notes.get("deployed")), last)
    b, f = base.metrics, final.metrics
    if final is base:
        return f"Baseline only: {f['top1_pct']:.2f}% top-1."
    line = (f"**{final.step}**: {f['top1_pct']:.2f}% top-1 ({f['top1_pct'] - b['top1_pct']:+.2f} pt), "
            f"{b['size_bytes'] / f['size_bytes']:.1f}× smaller and "
            f"{b['latency_ms_median'] / f['latency_ms_median']:.2f}× faster at batch 1 than the baseline.")
    if final is not last:
        line += (f" Deployed under --max-drop {final.notes.get('max_drop_pt'):g} pt: {last.step} reached "
                 f"{last.metrics['top1_pct']:.2f}%.")
    return line


def write_reports(report: RunReport, run_dir: Path) -> None:
    """report.json, report.md and report.html (with plots/*.png), each written atomically."""
    from compress.checkpoint import atomic_write
    from compress.html import write_html

    atomic_write(run_dir / "report.json", lambda p: p.write_text(report.to_json()))
    atomic_write(run_dir / "report.md", lambda p: p.write_text(render_markdown(report)))
    write_html(report, run_dir)
