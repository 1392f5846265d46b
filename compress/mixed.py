"""Accuracy-aware mixed precision: keep the INT8 nodes that hurt accuracy most in FP32, within a top-1 budget.

Used by :class:`compress.quantize.Quantize` when it has a budget (``max_drop_pt``; the pipeline gives it what is
left of ``--max-drop`` after the earlier steps):

0. **Calibration.** With minmax ranges (the default), INT8 that gets fewer held-out training images right than
   FP32 is built again from percentile ranges (:data:`SECOND_CALIBRATION`: ORT clips each tensor's range at the
   99.999th percentile of its histogram, so a few outliers no longer stretch it), and whichever model gets more of
   those images right goes on (on a tie, the one whose logits are closer to FP32's). Any loss triggers it, not just
   a missed budget: the held-out images were trained on, so INT8 loses less there than on new images (EfficientNet-B0
   on 500 Fashion-MNIST images: 97 → 94% held out, 86.50 → 80.94% on the test split, and 86.12% with percentile
   ranges). On a from-scratch EfficientNet-B0 on photos, minmax INT8 got 59.85% of 396 test photos right and
   percentile 70.71%, against FP32's 78.28%.
1. **Sensitivity.** ONNX Runtime's ``qdq_loss_debug`` records every activation of the FP32 model and of the plain
   QDQ model (Q/DQ arithmetic as written, no fused kernels) on :data:`SENSITIVITY_IMAGES` held-out training
   images. A tensor's fidelity is its signal-to-quantisation-noise ratio (SQNR, dB) against the FP32 model's; a
   node's *harm* is the fidelity it loses: the lowest SQNR among its inputs minus its output's.
2. **Accuracy.** Top-1 of the FP32 and the INT8 model on held-out training images (never the test split, never
   the calibration images), :data:`compress.calibration.HELD_OUT_IMAGES` of them.
3. **Search.** While INT8 loses more than the budget against FP32 there, re-quantize with the 1, 2, 4, … most
   harmful nodes and the nodes that read their outputs excluded (``nodes_to_exclude``: they compute in FP32, and
   the harmful node's output is no longer quantized), up to :data:`MAX_EXCLUDED` harmful nodes, and keep the first
   model inside the budget, unless it runs slower than the FP32 model beyond noise (the speed check of
   :mod:`compress.deploy`): then the search stops with the plain INT8 model, and the deploy policy decides between
   it and FP32.

Everything measured goes into the step's notes (``mixed_precision``): the ten most harmful nodes, each attempt,
what was kept in FP32 and why the search stopped.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import numpy as np

SENSITIVITY_IMAGES = 64
MAX_EXCLUDED = 16
WORST_SHOWN = 10
SQNR_CAP_DB = 100.0  # an exact tensor (the graph input, a weight-free reshape of it) has infinite SQNR
SECOND_CALIBRATION = "percentile"


def node_harm(fp32: Path, qdq: Path, images: "np.ndarray") -> list[dict]:
    """Every node of ``fp32`` whose output the QDQ model ``qdq`` also computes, most harmful first:
    ``{"node", "op", "sqnr_db", "harm_db"}`` (module docstring)."""
    from onnxruntime.quantization.qdq_loss_debug import (DEQUANT_OUTPUT_SUFFIX, collect_activations,
                                                          compute_signal_to_quantization_noice_ratio,
                                                          modify_model_output_intermediate_tensors)
    import onnx

    from compress.calibration import calibration_reader

    with tempfile.TemporaryDirectory() as work:
        acts = {}
        for name, path in (("fp32", fp32), ("qdq", qdq)):
            augmented = Path(work) / f"{name}.onnx"
            modify_model_output_intermediate_tensors(str(path), str(augmented))
            acts[name] = collect_activations(str(augmented), calibration_reader(images[:SENSITIVITY_IMAGES]))
    float_acts, q_acts = acts["fp32"], acts["qdq"]

    def sqnr(tensor: str) -> float | None:
        if tensor not in float_acts:
            return None
        q = q_acts.get(tensor + DEQUANT_OUTPUT_SUFFIX, q_acts.get(tensor))
        if q is None:
            return None
        value = compute_signal_to_quantization_noice_ratio(float_acts[tensor], q)
        return min(value, SQNR_CAP_DB) if math.isfinite(value) else SQNR_CAP_DB

    graph = onnx.load(str(fp32)).graph
    weights = {t.name for t in graph.initializer}
    rows = []
    for node in graph.node:
        out = sqnr(node.output[0]) if node.output else None
        ins = [s for s in (sqnr(t) for t in node.input if t and t not in weights) if s is not None]
        if out is None or not ins:
            continue
        rows.append({"node": node.name, "op": node.op_type, "sqnr_db": round(out, 2),
                     "harm_db": round(max(0.0, min(ins) - out), 2),
                     "consumers": [n.name for n in graph.node if node.output[0] in n.input]})
    return sorted(rows, key=lambda r: (-r["harm_db"], r["sqnr_db"]))


def top1_pct(path: Path, x: "np.ndarray", y: "np.ndarray", threads: int) -> float:
    from compress.core import run_onnx, session

    return 100.0 * float((run_onnx(session(path, threads), x).argmax(1) == y).mean())


def second_calibration(fp32: Path, int8: Path, held: tuple["np.ndarray", "np.ndarray"], *,
                       build: Callable[[Path], None], threads: int, work: Path) -> dict | None:
    """Step 0 of the module docstring: ``int8`` is the minmax model, ``build(out)`` writes the percentile one. None
    when minmax INT8 gets as many of ``held`` right as FP32 (nothing tried); else the record of the try, and
    ``int8`` holds the model it chose: more images right, and on a tie the logits closer to FP32's (SQNR)."""
    import shutil
    import time

    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio as sqnr

    from compress.core import run_onnx, session
    from compress.errors import CompressError

    x, y = held

    def scores(path: Path) -> tuple[float, "np.ndarray"]:
        logits = run_onnx(session(path, threads), x)
        return 100.0 * float((logits.argmax(1) == y).mean()), logits

    (fp32_top1, ref), (minmax_top1, minmax) = scores(fp32), scores(int8)
    if minmax_top1 >= fp32_top1:
        return None
    record = {"held_out_images": len(y), "fp32_top1_pct": round(fp32_top1, 2), "minmax_top1_pct": round(minmax_top1, 2),
              "minmax_logit_sqnr_db": round(float(sqnr(ref, minmax)), 2)}
    out, t = work / f"{SECOND_CALIBRATION}.onnx", time.perf_counter()
    try:
        build(out)
    except CompressError as e:  # ORT's histogram on a near-constant tensor: minmax stays
        return record | {"chosen": "minmax", "outcome": f"{SECOND_CALIBRATION} calibration failed ({e}): minmax stays"}
    theirs_top1, theirs = scores(out)
    record |= {f"{SECOND_CALIBRATION}_top1_pct": round(theirs_top1, 2),
               f"{SECOND_CALIBRATION}_logit_sqnr_db": round(float(sqnr(ref, theirs)), 2),
               "seconds": round(time.perf_counter() - t, 1)}
    if (theirs_top1, record[f"{SECOND_CALIBRATION}_logit_sqnr_db"]) <= (minmax_top1, record["minmax_logit_sqnr_db"]):
        return record | {"chosen": "minmax", "outcome": "no more held-out images right, so minmax stays"}
    shutil.move(out, int8)
    return record | {"chosen": SECOND_CALIBRATION, "outcome": "more held-out images right (or as many, with logits "
                                                             "closer to FP32's), so the INT8 model uses them"}


def search(fp32: Path, int8: Path, harm: list[dict], held: tuple["np.ndarray", "np.ndarray"], budget_pt: float, *,
           requantize: Callable[[list[str], Path], None], slower: Callable[[Path], bool], threads: int,
           work: Path) -> dict:
    """Find the smallest set of most harmful nodes to keep in FP32 so that INT8 stays within ``budget_pt`` of
    FP32 on ``held``. ``requantize(names, out)`` writes the INT8 model without those nodes; ``slower(path)`` is
    the speed check. If a model is accepted it replaces ``int8``. Returns the record for the step's notes."""
    import shutil

    x, y = held
    fp32_top1 = top1_pct(fp32, x, y, threads)
    int8_top1 = top1_pct(int8, x, y, threads)
    worst = [{k: v for k, v in r.items() if k != "consumers"} for r in harm[:WORST_SHOWN]]
    record = {"budget_pt": round(budget_pt, 3), "held_out_images": len(y), "fp32_top1_pct": round(fp32_top1, 2),
              "plain_int8_top1_pct": round(int8_top1, 2), "int8_top1_pct": round(int8_top1, 2),
              "worst_nodes": worst, "attempts": [],
              "kept_fp32": [], "sensitivity_images": min(SENSITIVITY_IMAGES, len(y))}
    if fp32_top1 - int8_top1 <= budget_pt:
        return record | {"outcome": "INT8 within the budget on held-out training images: nothing kept in FP32"}
    candidates = [r for r in harm if r["harm_db"] > 0][:MAX_EXCLUDED]
    k = 1
    while candidates and k <= len(candidates):
        # A node and the nodes reading its output: only then does that output stay float (a quantized reader
        # would put a QuantizeLinear/DequantizeLinear pair on it again).
        names = list(dict.fromkeys(n for r in candidates[:k] for n in [r["node"], *r["consumers"]]))
        out = work / f"mixed_{k}.onnx"
        requantize(names, out)
        top1 = top1_pct(out, x, y, threads)
        attempt = {"harmful_nodes": k, "kept_fp32": len(names), "top1_pct": round(top1, 2),
                   "drop_pt": round(fp32_top1 - top1, 2)}
        record["attempts"].append(attempt)
        if fp32_top1 - top1 <= budget_pt:
            if slower(out):
                attempt["speed_check"] = "slower than FP32"
                out.unlink()
                return record | {"outcome": f"keeping {len(names)} node(s) in FP32 met the budget but ran slower "
                                            "than the FP32 model beyond noise: the plain INT8 model stays"}
            shutil.move(out, int8)
            return record | {"kept_fp32": names, "int8_top1_pct": round(top1, 2),
                             "outcome": f"the {k} most harmful node(s) and their readers ({len(names)} nodes) kept in "
                                        "FP32: INT8 within the budget on held-out images"}
        out.unlink()
        k = len(candidates) if k < len(candidates) < 2 * k else 2 * k
    return record | {"outcome": f"no set of up to {len(candidates)} most harmful nodes kept in FP32 brought INT8 "
                                "within the budget: the plain INT8 model stays"}
