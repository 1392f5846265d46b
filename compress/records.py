"""The run's records: what was measured (:class:`Metrics`), what a stage's own work cost (:class:`Work`),
one step (:class:`StepReport`) and the whole run (:class:`RunReport`), as typed dataclasses.

``report.json`` is these records serialised (``schema_version`` 2, documented in ``docs/report_json.md``).
Derived numbers (deltas, ratios, the carbon break-even) are not part of the records: renderings compute them
(:mod:`compress.render`), and ``report.json`` carries the break-even as a rendering for scripts. Version-1 reports
(compress 0.1) are read and upgraded, so ``compress report`` and ``compress compare`` keep working on old runs.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from compress.errors import CompressError

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)


@dataclass(frozen=True, kw_only=True)
class Metrics:
    """One model measured: accuracy on the full test split, size, compute, latency, throughput, energy."""

    top1_pct: float
    size_bytes: int
    params: int
    macs: int
    latency_ms_median: float
    latency_ms_p90: float | None
    latency_batch: int
    latency_runs: int
    threads: int
    throughput_ips: float | None
    throughput_batch: int
    energy_per_inference_j: float | None
    co2_per_inference_g: float | None
    energy_method: str
    runtime: str = "n/a"  # what ran it: "onnxruntime", "torch eager (channels_last)", ...

    @classmethod
    def from_dict(cls, d: dict) -> "Metrics":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True, kw_only=True)
class Work:
    """What a stage's own work took (not its measurement): wall time, energy and CO2, labelled by method."""

    seconds: float
    energy_j: float | None = None
    co2_g: float | None = None
    energy_method: str = "n/a"


@dataclass(kw_only=True)
class StepReport:
    """One pipeline step: the stage's config, its artifact, the measured model, and what happened."""

    step: str
    kind: str  # "torch" or "onnx": the kind of model the step produced
    stage: dict  # the stage's own config (dataclasses.asdict)
    artifact: str  # path relative to the run folder
    artifact_sha256: str
    metrics: Metrics
    work: Work
    confusion: list[list[int]] = field(default_factory=list)  # test split; rows = true class, columns = predicted
    deployed: bool = False  # the bundle's model.onnx is this step's model
    cache_hit: bool = False  # the step's result came from a cache (the baseline), not from work in this run
    fallback: bool = False  # the step was made but not deployed because it ran slower (speed check)
    warnings: list[str] = field(default_factory=list)
    notes: dict = field(default_factory=dict)  # free-form details only; nothing reads them to steer

    @classmethod
    def from_dict(cls, d: dict) -> "StepReport":
        d = dict(d)
        d["metrics"] = Metrics.from_dict(d["metrics"])
        d["work"] = Work(**{k: v for k, v in d["work"].items() if k in {f.name for f in dataclasses.fields(Work)}})
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(kw_only=True)
class RunReport:
    """The whole run. ``steps[0]`` is the baseline; :meth:`deployed` is the step the bundle holds."""

    config: dict
    environment: dict
    dataset: dict
    model: str
    steps: list[StepReport] = field(default_factory=list)
    # Reference measurements that are not steps: "baseline_onnx" (the baseline exported to FP32 ONNX: the fair
    # "no compression" comparison for every ONNX step) and "baseline_eager" (the baseline in PyTorch eager).
    references: dict[str, Metrics] = field(default_factory=dict)
    # Energy per inference at batches 1, 8 and 32 of "deployed", "baseline_onnx" and "baseline_eager": {name: {batch:
    # {"energy_per_inference_j", "ms_per_image", "images", "energy_method"}}} (batch 1 from the metrics).
    energy_by_batch: dict[str, dict[str, dict]] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    created_utc: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    @property
    def baseline(self) -> StepReport:
        return self.steps[0]

    def deployed(self) -> StepReport:
        """The step whose model the bundle ships: the one marked deployed, else the last step."""
        return next((s for s in self.steps if s.deployed), self.steps[-1])

    def step(self, name: str) -> StepReport:
        try:
            return next(s for s in self.steps if s.step == name)
        except StopIteration:
            raise CompressError(f"the report has no {name!r} step (steps: "
                                f"{', '.join(s.step for s in self.steps)})") from None

    def has_step(self, name: str) -> bool:
        return any(s.step == name for s in self.steps)

    def to_dict(self) -> dict:
        from compress.render import carbon_break_even

        d = asdict(self)
        if len(self.steps) >= 2:
            d["carbon"] = carbon_break_even(self)  # a rendering, for scripts; never read back
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "RunReport":
        version = d.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise CompressError(f"report schema_version {version!r} is not one this compress reads "
                                f"({', '.join(map(str, READABLE_VERSIONS))}): re-run with this version of compress")
        if version == 1:
            d = upgrade_v1(d)
        d = dict(d)
        d.pop("carbon", None)
        d["steps"] = [StepReport.from_dict(s) for s in d.get("steps", [])]
        d["references"] = {k: Metrics.from_dict(v) for k, v in (d.get("references") or {}).items()}
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def load(cls, path: Path) -> "RunReport":
        path = Path(path)
        if path.is_dir():
            path = path / "report.json"
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise CompressError(f"{path} not found: give a run folder written by `compress run`") from None
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError, ValueError) as e:
            raise CompressError(f"{path} is not a compress report ({type(e).__name__}): re-run the job") from None


def upgrade_v1(d: dict) -> dict:
    """A version-1 report as version 2: typed flags out of ``notes``, the last step deployed unless marked."""
    d = json.loads(json.dumps(d))  # a deep copy
    steps = d.get("steps", [])
    marked = any((s.get("notes") or {}).get("deployed") for s in steps)
    for i, s in enumerate(steps):
        notes = dict(s.get("notes") or {})
        s["warnings"] = list(notes.pop("warnings", []) or [])
        s["cache_hit"] = bool(notes.pop("cache_hit", False))
        s["fallback"] = bool(notes.pop("fallback", False))
        s["deployed"] = bool(notes.pop("deployed", False)) or (not marked and i == len(steps) - 1)
        s["notes"] = notes
        w = s.get("work") or {}
        s["work"] = {"seconds": w.get("seconds") or 0.0, "energy_j": w.get("energy_j"), "co2_g": w.get("co2_g"),
                     "energy_method": w.get("energy_method") or "n/a"}
        s["metrics"].setdefault("runtime", "onnxruntime" if s.get("kind") == "onnx" else "torch eager")
    d["schema_version"] = SCHEMA_VERSION
    return d


def chance_pct(confusion: list[list[int]]) -> float | None:
    """Top-1 of always answering the most common test class: the floor any trained model must clear."""
    rows = [sum(r) for r in confusion or []]
    return 100.0 * max(rows) / sum(rows) if rows and sum(rows) else None

