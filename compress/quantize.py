"""Static INT8 post-training quantization with ``onnxruntime.quantization``, built for the CPU it will run on.

QDQ format, per-channel INT8 weights, calibrated on images from the *training* split (never the test split), after
``quant_pre_process`` (shape inference and graph optimisation). The stage always returns the INT8 model it wrote;
whether INT8 ships (it may run slower than FP32 on some CPUs) is the pipeline's decision (``compress.deploy``).

``target`` names the CPU the model is built for; :func:`compress.targets.int8_recipe` turns it into the choices
that decide which ORT kernels run there (U8S8 on x86-64, S8S8 on arm64, depthwise padding, 7-bit weights).

``kernel_rewrites`` keep ORT on its fast kernels (:mod:`compress.rewrites`): padding is exact, the hardsigmoid clip
coarsens some INT8 grids slightly, so the rewritten model is compared with the plain one (same calibration ranges)
on calibration images. ORT's quantizer output goes to the run log, never to the terminal or stdout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from compress.calibration import (HELD_OUT_IMAGES, calibration_images, calibration_reader,  # noqa: F401 (API too)
                                  default_calibration_size)
from compress.core import OnnxModel, check_onnx
from compress.errors import CompressError
from compress.host import host_arch
from compress.measure import SPEED_CHECK_RUNS
from compress.ort_output import quantizer_output_to_log
from compress.targets import ACTIVATION_TYPES, TARGETS, Int8Recipe, int8_recipe  # noqa: F401 (API too)

if TYPE_CHECKING:
    import numpy as np

    from compress.core import Context

CALIBRATIONS = ("minmax", "entropy", "percentile")
IF_SLOWER = ("warn", "fallback")
WEIGHT_BITS = (None, 8, 7)
REWRITE_CHECK_IMAGES = 256  # calibration images the rewritten model is compared on (spread over the set)
# Below this top-1 agreement with the plain INT8 model, a rewrite did more than re-round: padding is bit-exact, and
# ≤10 %-coarser hardswish grids flip borderline images only. Two barely trained tiny MobileNetV3s (53 % and 67 %
# accurate: many borderline images) agreed on 95-98 %, about as two plain INT8 calibrations of one model do (97.7-
# 98.4 %). A wrong clip bound or scale shifts every hardswish after it and scrambles far more than 10 %.
MIN_AGREEMENT_PCT = 90.0


@dataclass(frozen=True, kw_only=True)
class Quantize:
    """Static INT8 quantization of an ONNX model, built for ``target``.

    >>> int8 = Quantize(calibration="minmax", calibration_size=2048, target="arm64")(fp32_onnx, ctx)  # doctest: +SKIP
    """

    calibration: str = "minmax"  # minmax | entropy | percentile (ORT CalibrationMethod)
    calibration_size: int | None = None  # training images that calibrate; None: compress.calibration's default
    per_channel: bool = True  # one scale per output channel: depthwise convs need it
    target: str = "host"  # host | x86_64 | arm64: the CPU the INT8 model is built for (int8_recipe)
    activation_type: str = "auto"  # auto (the target's) | uint8 | int8
    kernel_rewrites: bool = True  # graph rewrites that keep ORT on its fast INT8 kernels (compress.rewrites)
    if_slower: str = "warn"  # warn | fallback: what the deploy step does when INT8 runs slower than FP32 here
    speed_check_runs: int = SPEED_CHECK_RUNS  # batch-1 runs of each model in the deploy step's speed check; 0 skips
    # INT8's top-1 budget against its FP32 input on held-out training images: the most harmful nodes stay FP32
    # until it holds (compress.mixed). None: plain INT8. The pipeline sets it from --max-drop.
    max_drop_pt: float | None = None
    # None: the target's default, and on an x86-64 host whichever of 8-bit and 7-bit weights gets more held-out
    # training images right (compress.weight_bits); 8 or 7: that width (7 is ORT's reduce_range)
    weight_bits: int | None = None

    accepts = "onnx"
    produces = "onnx"
    name = "quantize"
    title = "INT8 quantization"

    def check(self) -> None:
        if self.calibration not in CALIBRATIONS:
            raise CompressError(f"unknown calibration {self.calibration!r}: choose one of {', '.join(CALIBRATIONS)}")
        if self.calibration_size is not None and self.calibration_size < 1:
            raise CompressError(f"calibration_size must be at least 1, got {self.calibration_size}: INT8 needs "
                                "training images to calibrate on")
        int8_recipe(self.target, self.activation_type)  # validates both
        if self.if_slower not in IF_SLOWER:
            raise CompressError(f"unknown if_slower {self.if_slower!r}: choose warn (keep INT8, say so loudly) or "
                                "fallback (keep the FP32 model when INT8 is slower on this CPU)")
        if self.speed_check_runs < 0:
            raise CompressError(f"speed_check_runs must be 0 (skip) or more, got {self.speed_check_runs}")
        if self.weight_bits not in WEIGHT_BITS:
            raise CompressError(f"weight_bits must be 8, 7 or null (choose by held-out accuracy), got "
                                f"{self.weight_bits!r}: 7-bit weights are ORT's reduce_range")
        if self.max_drop_pt is not None and not self.max_drop_pt >= 0:
            raise CompressError(f"max_drop_pt must be 0 or more (top-1 points), got {self.max_drop_pt}")

    def __call__(self, model: OnnxModel, ctx: "Context") -> OnnxModel:
        from compress.checkpoint import atomic_write

        self.check()
        check_onnx(model.path)
        if ctx.data.train_x.shape[0] == 0:
            raise CompressError("--int8 needs calibration images but the training split is empty: add training images")
        calib = calibration_images(ctx.data, self.calibration_count(ctx.data.train_x.shape[0], ctx.data.input_size),
                                   ctx.seed)
        recipe = int8_recipe(self.target, self.activation_type)
        if self.weight_bits is not None:
            recipe = replace(recipe, reduce_range=self.weight_bits == 7)
        path = ctx.artifact(self.name, "model.onnx")
        temps = {k: ctx.artifact(self.name, f) for k, f in [("pre", "preprocessed.onnx"), ("plain", "plain.onnx"),
                                                              ("padded", "padded.onnx"), ("table", "ranges.json")]}
        notes: dict = {}
        try:
            atomic_write(path, lambda tmp: self._write(model.path, tmp, calib, recipe, temps, notes, ctx))
            if self.weight_bits is None and self.target == "host" and recipe.target == "x86_64":
                recipe = self._choose_weight_bits(model.path, path, calib, recipe, temps, notes, ctx)
            self._compare(temps["plain"], path, calib, notes, ctx)
            if self.max_drop_pt is not None:
                notes["mixed_precision"] = self._mixed(model.path, path, calib, recipe, temps, notes, ctx)
        finally:
            for p in temps.values():
                p.unlink(missing_ok=True)
        self._off_target(recipe, ctx)
        ctx.note(self.name, target=self.target, recipe=asdict(recipe), activation_type=recipe.activation_type,
                 weight_type=recipe.weight_type, reduce_range=recipe.reduce_range, activation_type_reason=recipe.why,
                 calibration_images=len(calib), calibration_split="train", **{"calibration": self.calibration} | notes)
        return OnnxModel(path, foreign=recipe.target != host_arch())

    def calibration_count(self, train_images: int, input_size: int) -> int:
        """How many training images calibrate: the configured count, or all of a smaller split. Under an accuracy
        budget, a fifth of a small training split (up to HELD_OUT_IMAGES) stays out, so that mixed precision has
        images to check INT8 on: on 1,584 photos every image calibrated, and EfficientNet-B0's INT8 (72% top-1
        against FP32's 100%) could not try it."""
        size = min(self.calibration_size or default_calibration_size(input_size), train_images)
        if self.max_drop_pt is None:
            return size
        return min(size, train_images - min(HELD_OUT_IMAGES, train_images // 5))

    def _off_target(self, recipe: Int8Recipe, ctx: "Context") -> None:
        """Say loudly when the model is built for another CPU than this one: what is measured here misleads."""
        from compress.host import has_vnni, is_x86

        host = int8_recipe("host").target
        ctx.note(self.name, host=host)  # the CPU this stage ran on, beside the target it built for
        if recipe.target == host:
            return
        saturates = recipe.activation_type == "int8" and is_x86() and not has_vnni()
        ctx.warn(self.name, f"INT8 built for {recipe.target} on this {host} machine: its latency here says nothing "
                            "about the device" + (", and its accuracy here is too low: ORT's S8S8 kernels on x86-64 "
                            "without VNNI saturate 16-bit sums (a tiny MobileNetV3: 30% here, 67% like FP32 on an "
                            "emulated Cortex-A76); check accuracy on the device" if saturates else ""))

    def _choose_weight_bits(self, src: Path, path: Path, calib: "np.ndarray", recipe: Int8Recipe,
                            temps: dict[str, Path], notes: dict, ctx: "Context") -> Int8Recipe:
        """8-bit or 7-bit weights, whichever gets more held-out training images right (:mod:`compress.weight_bits`),
        from the same calibration ranges. ``path`` and ``temps["plain"]`` end up holding the chosen width."""
        from compress import weight_bits
        from compress.calibration import held_out_images

        other = replace(recipe, reduce_range=not recipe.reduce_range)
        mine = {k: temps[k].with_name(f"other_{temps[k].name}") for k in ("plain", "padded")}
        held = held_out_images(ctx.data, len(calib), ctx.seed, count=weight_bits.held_out_count(ctx.data.input_size))
        notes["weight_bits"] = record = weight_bits.choose(
            path, recipe.reduce_range, lambda out: self._write(src, out, calib, other, temps | mine, {}, ctx,
                                                               recalibrate=False),
            held, ctx.threads, companions={mine["plain"]: temps["plain"], mine["padded"]: None})
        return recipe if record["reduce_range"] == recipe.reduce_range else replace(
            other, why=f"{other.why}; {record['outcome']}")

    def _mixed(self, fp32: Path, int8: Path, calib: "np.ndarray", recipe: Int8Recipe, temps: dict[str, Path],
               notes: dict, ctx: "Context") -> dict:
        """Minmax INT8 that loses held-out images gets a second try from percentile ranges, then the most harmful
        nodes stay in FP32 while INT8 misses ``max_drop_pt`` (:mod:`compress.mixed`)."""
        from compress.calibration import held_out_images

        held = held_out_images(ctx.data, len(calib), ctx.seed)
        if len(held[1]) == 0:
            return {"outcome": "not tried: every training image calibrates, none is left to check accuracy on"}
        stage, tried = self._second_calibration(fp32, int8, calib, recipe, temps, held, notes, ctx)
        return stage._search(fp32, int8, calib, recipe, temps, held, ctx) | ({"calibration": tried} if tried else {})

    def _second_calibration(self, fp32: Path, int8: Path, calib: "np.ndarray", recipe: Int8Recipe,
                            temps: dict[str, Path], held: tuple, notes: dict, ctx: "Context") -> tuple["Quantize", dict | None]:
        """The stage that goes on (this one, or one with percentile ranges if they got more held-out images right:
        :func:`compress.mixed.second_calibration`) and the record of the try (None: not tried)."""
        import tempfile

        from compress import mixed

        if self.calibration != "minmax":
            return self, None
        other, theirs = replace(self, calibration=mixed.SECOND_CALIBRATION), {}
        with tempfile.TemporaryDirectory(dir=int8.parent) as work:  # the try's own plain model and ranges
            mine = temps | {k: Path(work) / temps[k].name for k in ("plain", "padded", "table")}
            tried = mixed.second_calibration(fp32, int8, held, threads=ctx.threads, work=Path(work),
                                             build=lambda out: other._write(fp32, out, calib, recipe, mine, theirs, ctx))
            if tried is None or tried["chosen"] != other.calibration:
                return self, tried  # minmax's plain model and ranges are still in temps
            for k in ("plain", "table"):
                if mine[k].is_file():
                    mine[k].replace(temps[k])
        notes.update(theirs, calibration=other.calibration)
        other._compare(temps["plain"], int8, calib, notes, ctx)
        return other, tried

    def _search(self, fp32: Path, int8: Path, calib: "np.ndarray", recipe: Int8Recipe, temps: dict[str, Path],
                held: tuple, ctx: "Context") -> dict:
        """Keep the most harmful nodes in FP32 while INT8 misses ``max_drop_pt`` (:func:`compress.mixed.search`)."""
        import tempfile

        from compress import mixed
        from compress.measure import compare_speed, onnx_call

        if not temps["plain"].is_file():  # kernel_rewrites off: the QDQ model with the FP32 model's tensor names
            self._quantize_static(temps["pre"], temps["plain"], calib, recipe)
        harm, x = mixed.node_harm(temps["pre"], temps["plain"], held[0]), held[0][:1]

        def slower(candidate: Path) -> bool:
            if self.speed_check_runs == 0 or recipe.target != host_arch():
                return False  # no speed check asked for, or none possible here (another CPU's kernels)
            result = compare_speed(onnx_call(fp32, x, ctx.threads), onnx_call(candidate, x, ctx.threads),
                                   rounds=10, runs_per_round=max(10, self.speed_check_runs // 10))
            return result.verdict == "slower"

        # Keeping nodes in FP32 changes no FP32 tensor, so every candidate reuses the shipped model's ranges
        # (temps["table"]) instead of calibrating again: with percentile ranges, EfficientNet-B0 on 60,000 images
        # at 32 px spent about 3.5 minutes calibrating each candidate.
        with tempfile.TemporaryDirectory(dir=int8.parent) as work:  # candidates never outlive the search
            return mixed.search(fp32, int8, harm, held, self.max_drop_pt, threads=ctx.threads, work=Path(work),
                                requantize=lambda names, out: self._write(fp32, out, calib, recipe, temps, {}, ctx,
                                                                          exclude=names, recalibrate=False),
                                slower=slower)

    def _write(self, src: Path, tmp: Path, calib: "np.ndarray", recipe: Int8Recipe, temps: dict[str, Path],
               notes: dict, ctx: "Context", exclude: list[str] | None = None, recalibrate: bool = True) -> None:
        """Pre-process, quantize and (with ``kernel_rewrites``) rewrite ``src`` into ``tmp``. The plain INT8
        model (same calibration ranges, no rewrites) is left at ``temps["plain"]`` for the comparison. ``exclude``:
        nodes (of the pre-processed model) that stay FP32. ``recalibrate`` False reuses the ranges of the last
        call (``temps["table"]``)."""
        import time

        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from compress.rewrites import (drop_unused_initializers, hardsigmoid_as_clip, name_nodes, pad_stem_input,
                                       short_tensor_names)

        with quantizer_output_to_log() as caught:
            quant_pre_process(str(src), str(temps["pre"]))
            name_nodes(temps["pre"])  # nodes_to_exclude (mixed precision) names nodes
            if recalibrate:
                temps["table"].unlink(missing_ok=True)  # calibrate once, on the unpadded model; reuse the ranges
            if not self.kernel_rewrites:
                self._quantize_static(temps["pre"], tmp, calib, recipe, table=temps["table"], exclude=exclude)
                q = onnx.load(str(tmp))
            else:
                self._quantize_static(temps["pre"], temps["plain"], calib, recipe, table=temps["table"],
                                      exclude=exclude)
                padded = _pad_depthwise(temps["pre"], temps["padded"], calib[:8], recipe, ctx, self.name)
                if padded:  # a second quantizer pass, without calibration: part of what the comparison costs
                    t = time.perf_counter()
                    self._quantize_static(temps["padded"], tmp, None, recipe, table=temps["table"], exclude=exclude)
                    notes["rewrite_check"] = {"extra_quantize_seconds": round(time.perf_counter() - t, 3)}
                q = onnx.load(str(tmp if padded else temps["plain"]))
                clip = hardsigmoid_as_clip(q)
                stem = pad_stem_input(q) if recipe.pad_stem else 0
                drop_unused_initializers(q)
                notes["kernel_rewrites"] = {
                    "depthwise_convs_padded": padded, "depthwise_multiple": recipe.depthwise_multiple,
                    "hardsigmoids_as_clip": clip.rewritten, "hardsigmoids_skipped_coarse": clip.skipped_coarse,
                    "hardsigmoid_worst_coarsening_pct": round(100 * clip.worst_coarsening, 2),
                    "stem_channels_padded": stem}
            short_tensor_names(q)
            onnx.save(q, str(tmp))
        unique = list(dict.fromkeys(caught))
        notes["quantizer_warnings"] = {"count": len(caught), "unique": [m[:200] for m in unique[:10]]}
        check_onnx(tmp)

    def _quantize_static(self, src: Path, out: Path, calib: "np.ndarray | None", recipe: Int8Recipe,
                         table: Path | None = None, exclude: list[str] | None = None) -> None:
        """ORT ``quantize_static`` with the recipe; ``table`` caches the calibration ranges (a second call
        with the same ``table`` reuses them and needs no images)."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        extra = {"ActivationSymmetric": recipe.symmetric_activations, "WeightSymmetric": True}
        if recipe.symmetric_activations:
            extra["CalibTensorRangeSymmetric"] = True  # calibrate the ranges S8S8 will use
        if self.calibration != "minmax":
            # ORT's histogram calibrators stack every batch's outputs with np.asarray, which fails on a ragged last
            # batch (1,347 digits images = 42 × 32 + 3); one batch per pass merges histograms instead (and holds one
            # batch of activations in memory, not all of them).
            extra["CalibStridedMinMax"] = 1
        try:
            quantize_static(
                str(src), str(out), calibration_reader(calib) if calib is not None else None,
                quant_format=QuantFormat.QDQ, per_channel=self.per_channel, reduce_range=recipe.reduce_range,
                activation_type=qtype[recipe.activation_type], weight_type=qtype[recipe.weight_type],
                calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                  "percentile": CalibrationMethod.Percentile}[self.calibration],
                extra_options=extra, calibration_cache_path=str(table) if table is not None else None,
                nodes_to_exclude=list(exclude or []))
        except ValueError as e:  # ORT's histogram on a near-constant tensor; anything else is a bug
            if "finite-sized bins" not in str(e):
                raise
            raise CompressError(f"{self.calibration} calibration failed: a tensor's values span too narrow a range "
                                "for ORT's histogram (an untrained model?); use --calibration minmax") from None

    def _compare(self, plain: Path, rewritten: Path, calib: "np.ndarray", notes: dict, ctx: "Context") -> None:
        """With ``kernel_rewrites``: top-1 agreement and largest logit difference of the rewritten and the plain
        INT8 model on up to :data:`REWRITE_CHECK_IMAGES` calibration images, spread over the set."""
        import time

        import numpy as np

        from compress.core import run_onnx, session

        if not self.kernel_rewrites:
            return
        x = calib[np.linspace(0, len(calib) - 1, min(REWRITE_CHECK_IMAGES, len(calib))).astype(int)]
        t = time.perf_counter()
        a, b = run_onnx(session(plain, ctx.threads), x), run_onnx(session(rewritten, ctx.threads), x)
        agree = top1_agreement_pct(a, b)
        diff = float(np.abs(a - b).max())
        notes.setdefault("rewrite_check", {"extra_quantize_seconds": 0.0}).update(
            images=len(x), top1_agreement_pct=round(agree, 2), max_logit_diff=round(diff, 4),
            logit_range=round(float(np.ptp(a)), 4), min_agreement_pct=MIN_AGREEMENT_PCT,
            compare_seconds=round(time.perf_counter() - t, 3))
        if agree < MIN_AGREEMENT_PCT:
            ctx.warn(self.name, f"the kernel rewrites changed INT8 predictions: top-1 agrees with the plain INT8 "
                                f"model on only {agree:.1f}% of {len(x)} calibration images (max logit difference "
                                f"{diff:.3g}); set quantize.kernel_rewrites: false for the plain, slower INT8 model")


def top1_agreement_pct(a: "np.ndarray", b: "np.ndarray") -> float:
    """Share of rows where the two sets of logits have a top-1 class in common. INT8 logits sit on a grid, so
    two classes often tie; ``argmax`` would break the tie by index and count a false disagreement."""
    rows = range(len(a))
    same = (a[rows, b.argmax(1)] == a.max(1)) | (b[rows, a.argmax(1)] == b.max(1))
    return 100.0 * float(same.mean())


def _pad_depthwise(src: Path, out: Path, x: "np.ndarray", recipe: Int8Recipe, ctx: "Context", step: str) -> int:
    """Write ``src`` with its depthwise convs padded (:func:`compress.rewrites.pad_depthwise_channels`) to ``out``
    if the padded model gives the same outputs on ``x``, as it must: the padding is exact. Returns the number of
    convs padded; a failed parity check leaves ``out`` unwritten and says so loudly."""
    import numpy as np
    import onnx

    from compress.core import run_onnx, session
    from compress.rewrites import pad_depthwise_channels

    m = onnx.load(str(src))
    count = pad_depthwise_channels(m, recipe.depthwise_multiple)
    if count == 0:
        return 0
    onnx.save(m, str(out))
    ref = run_onnx(session(src, ctx.threads), x)
    got = run_onnx(session(out, ctx.threads), x)
    limit = 1e-4 * max(1.0, float(np.abs(ref).max()))
    if np.allclose(got, ref, rtol=1e-4, atol=limit):
        return count
    out.unlink()
    diff = float(np.nan_to_num(np.abs(got - ref), nan=np.inf).max())
    ctx.note(step, depthwise_padding_failed={"convs": count, "max_abs_diff": diff, "limit": limit})
    ctx.warn(step, f"padding {count} depthwise convs to a multiple of {recipe.depthwise_multiple} channels changed the "
                   f"FP32 outputs by {diff:.3g} (limit {limit:.3g}), so it was not used: the INT8 model is correct but "
                   "those convs run on ORT's generic INT8 depthwise kernel, 2-3× slower; please report the model")
    return 0
