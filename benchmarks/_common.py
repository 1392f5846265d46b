"""Shared by the benchmark scripts: the environment record, MAC bounds, CSV and Markdown, small contexts.

Every comparison runs its alternatives in one process, interleaved in short blocks with the order reversed
every other block (:func:`compress.measure.interleaved`), so load from other processes falls on all of them
alike. Ratios are what to read; absolute times move with the machine's load (the environment records how much of
the CPU other processes took during the run, from /proc/stat minus this process's own CPU time). The CPU itself
is described by :mod:`compress.host`, as in every run report.

Run the scripts as modules from the repository root: ``python -m benchmarks.NAME``.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from compress.host import cpu_record, library_versions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VERSIONS = ("torch", "torchvision", "onnx", "onnxruntime", "torch-pruning", "numpy", "compress")

# Peak multiply-accumulates per cycle per core, from vector width, assuming two vector ports:
# FP32: 2 FMA ports × 16 lanes (AVX-512) = 32; INT8: VPDPBUSD does 64 u8×s8 MACs per 512-bit op × 2 ports = 128.
# AVX2-only CPUs get half of each. Zen 4 (AMD family 25) runs 512-bit ops as two 256-bit halves, so its real peak
# is half of this nominal figure: the "× MAC bound" column is then twice as pessimistic as it reads.
FP32_MACS_PER_CYCLE = {"avx512": 32, "avx2": 16}
INT8_MACS_PER_CYCLE = {"avx512": 128, "avx2": 64}


def vector_isa(flags: set[str]) -> str:
    return "avx512" if "avx512f" in flags else "avx2"


def _cpu_busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux ``/proc/stat``), or None elsewhere."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def others_cpu_share(env: dict) -> float | None:
    """The fraction of the machine's CPU capacity that *other* processes used since ``environment()``."""
    busy = _cpu_busy_seconds()
    if busy is None or env.get("cpu_busy_start") is None:
        return None
    wall = time.monotonic() - env["wall_start"]
    others = (busy - env["cpu_busy_start"]) - (_own_cpu_seconds() - env["own_cpu_start"])
    return max(0.0, others) / max(1e-9, wall * (env["cores"] or 1))


def environment(threads: list[int]) -> dict[str, Any]:
    """CPU (model, family, nominal MHz, SIMD flags, from :func:`compress.host.cpu_record`), cores, threads used,
    load, library versions."""
    cpu = cpu_record()
    isa = vector_isa(set(cpu["cpu_flags"]))
    return {
        "cpu": cpu["cpu"], "cpu_family": cpu["cpu_family"], "cpu_model": cpu["cpu_model"], "cpu_mhz": cpu["cpu_mhz"],
        "simd_flags": cpu["cpu_flags"], "cores": cpu["cores"], "machine": cpu["machine"],
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads_measured": threads, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_start": os.getloadavg(), "python": platform.python_version(),
        "versions": library_versions(VERSIONS), "cpu_busy_start": _cpu_busy_seconds(),
        "own_cpu_start": _own_cpu_seconds(), "wall_start": time.monotonic(),
        "mac_bound_assumption": f"{isa}: FP32 {FP32_MACS_PER_CYCLE[isa]} and INT8 {INT8_MACS_PER_CYCLE[isa]} MAC/cycle/"
                                "core at the nominal clock (cpu MHz): 2 vector ports × lanes (INT8: VPDPBUSD)",
    }


def finish_environment(env: dict) -> None:
    """Close the record at the end of a run: load average, other processes' CPU share, wall seconds."""
    env["loadavg_end"] = os.getloadavg()
    env["others_cpu_share"] = others_cpu_share(env)
    env["seconds"] = round(time.monotonic() - env["wall_start"])


def write_results(out: Path, stem: str, md: list[str], rows: list[dict], data: dict) -> None:
    """``stem``.csv (the rows), ``stem``.md and ``stem``.json (``data``) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / f"{stem}.csv")
    (out / f"{stem}.md").write_text("\n".join(md))
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1, default=str))


def mac_bound_ms(macs: int, *, int8: bool, threads: int, env: dict) -> float | None:
    """The time ``macs`` multiply-accumulates take at the CPU's peak rate: a lower limit for a conv net (None when
    the CPU states no clock, as on most Arm boards)."""
    if not env["cpu_mhz"]:
        return None
    per_cycle = (INT8_MACS_PER_CYCLE if int8 else FP32_MACS_PER_CYCLE)[vector_isa(set(env["simd_flags"]))]
    return macs / (per_cycle * env["cpu_mhz"] * 1e6 * threads) * 1e3


def ms(times: list[float], q: float) -> float:
    return float(np.quantile(np.asarray(times), q)) * 1e3


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.2f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def env_markdown(env: dict) -> str:
    v = env["versions"]
    share = env["others_cpu_share"]
    if share is None:
        load = "other processes' CPU use not measurable here (no /proc/stat)"
    elif share > 0.25:
        load = (f"**Load warning:** other processes used {share:.0%} of the {env['cores']} cores during this run, "
                "so multi-thread numbers partly measure waiting for descheduled threads; 1-thread ratios stay "
                "meaningful (interleaved)")
    else:
        load = f"other processes used {share:.0%} of the {env['cores']} cores during this run"
    mhz = f"{env['cpu_mhz']:.0f} MHz nominal" if env["cpu_mhz"] else "clock not stated"
    return (f"CPU: {env['cpu']} (family {env['cpu_family']} model {env['cpu_model']}, {mhz}), {env['cores']} cores, "
            f"SIMD {', '.join(env['simd_flags'])}; threads measured "
            f"{env['threads_measured']}; {load}; load average {env['loadavg_start'][0]:.2f} at start, "
            f"{env['loadavg_end'][0]:.2f} at end.  \n"
            f"Python {env['python']}, torch {v['torch']}, torchvision {v['torchvision']}, onnx {v['onnx']}, "
            f"onnxruntime {v['onnxruntime']}, torch-pruning {v['torch-pruning']}, numpy {v['numpy']}.  \n"
            f"MAC bound: {env['mac_bound_assumption']}.")


def random_context(size: int, *, train: int = 64, test: int = 8, classes: int = 1000, seed: int = 0,
                   threads: int = 1, run_dir: Path | None = None):
    """A compress Context over random uint8 images: enough for Export's parity check, Prune's BN
    re-estimation and Quantize's calibration when only latency and size matter."""
    import tempfile

    import torch

    from compress.core import Context
    from compress.data import Dataset
    from compress.measure import MeasureConfig

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (train + test, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (train + test,), generator=g)
    data = Dataset(name="random", classes=[str(i) for i in range(classes)], train_x=x[:train], train_y=y[:train],
                   test_x=x[train:], test_y=y[train:], source="random uint8 images (latency only)")
    return Context(data=data, run_dir=Path(run_dir or tempfile.mkdtemp(prefix="bench-")), seed=seed, device="cpu",
                   measure=MeasureConfig(threads=threads), meter=None)


def ort_default_int8(fp32_path: Path, out: Path, calib: np.ndarray) -> Path:
    """ORT's ``quantize_static`` with every option left at its default: the usual copy-paste recipe
    (QDQ, S8S8, per-tensor, MinMax; no pre-processing)."""
    import warnings

    from onnxruntime.quantization import quantize_static

    from compress.quantize import calibration_reader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(fp32_path), str(out), calibration_reader(calib))
    return out
