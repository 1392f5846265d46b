"""``compress bench``: measure an edge bundle (or an ONNX file) on this machine, as the Pi runner does.

The record has the same shape as the Pi runner's ``--bench`` JSON, and its ``metrics`` use the
field names of :class:`compress.measure.Metrics`, so device and host numbers line up.
"""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path

from compress.errors import CompressError


def bench(target: Path, *, threads: int = 1, power_watts: float | None = None, min_seconds: float = 5.0,
          country: str = "USA") -> dict:
    """Latency (batch 1, median/p90), throughput and energy per inference of ``target``.

    >>> record = bench(Path("runs/x/edge"), threads=1)  # doctest: +SKIP
    """
    import numpy as np
    import onnxruntime

    from compress.bundle import verify_bundle
    from compress.energy import EnergyMeter
    from compress.core import OnnxModel, check_onnx
    from compress.measure import MeasureConfig, latency_loop, onnx_runner, throughput
    from compress.host import cpu_name

    target = Path(target)
    if threads < 1:
        raise CompressError(f"--threads must be at least 1, got {threads}")
    if not target.exists():
        raise CompressError(f"{target} does not exist: give a bundle folder (RUN_DIR/edge) or a .onnx file")
    if target.is_dir():
        verify_bundle(target)
        model_path = target / "model.onnx"
    elif target.suffix == ".onnx" and target.is_file():
        model_path = target
    else:
        raise CompressError(f"{target} is neither a bundle folder nor a .onnx file: give RUN_DIR/edge or a model file")
    check_onnx(model_path)
    model = OnnxModel(model_path)
    cfg = MeasureConfig(threads=threads, min_seconds=min_seconds)
    infer, info = onnx_runner(model, threads)
    shape = [d if isinstance(d, int) else 1 for d in model.session(threads).get_inputs()[0].shape]
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal(shape, dtype=np.float32)
    with EnergyMeter(country=country, power_watts=power_watts) as meter:
        times, energy = latency_loop(infer, x1, cfg, meter, "bench")
    xb = rng.standard_normal([cfg.throughput_batch] + shape[1:], dtype=np.float32)
    ips = throughput(infer, xb, cfg)
    q = np.quantile(np.asarray(times), [0.5, 0.9]) * 1e3
    return {
        "schema_version": 1, "kind": "bench", "model": str(model_path),
        "environment": {"machine": platform.machine(), "cpu": cpu_name(), "python": platform.python_version(),
                        "onnxruntime": onnxruntime.__version__, "threads": threads},
        "metrics": {
            "latency_ms_median": float(q[0]), "latency_ms_p90": float(q[1]), "latency_batch": 1,
            "latency_runs": len(times), "threads": threads, "throughput_ips": ips,
            "throughput_batch": cfg.throughput_batch, "size_bytes": info["size_bytes"],
            "energy_per_inference_j": energy.energy_j / len(times) if energy.energy_j is not None else None,
            "energy_method": energy.method,
        },
        "measure": dataclasses.asdict(cfg),
    }
