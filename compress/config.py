"""``RunConfig``: everything a run needs, loadable from YAML and written beside every run.

Precedence is defaults < YAML (``--config``) < command-line flags. Unknown keys, wrong types and out-of-range
values are errors that name the file (or flag) and the key, all of them at once. The stages are their own
config: ``RunConfig.prune`` *is* a :class:`~compress.prune.Prune`, so ``dataclasses.asdict`` of it goes straight
into the report.

One rule switches every optional stage: its field is ``None`` when the stage is off. In YAML a stage is on when
its section is a mapping (``quantize: {}`` or ``quantize: true`` for the defaults) and off when it is ``null``.
``prune`` with ratio 0 is off too, and ``finetune`` is dropped when there is nothing to recover (no prune and no
edge-friendly swap). :func:`resolve` writes such implied settings into the config it returns, so the
``config.yaml`` of a run says exactly what ran. Version-1 configs (``int8: true``, ``edge_friendly.enabled``)
still load: :func:`migrate` translates their keys.

>>> cfg = resolve(overrides={"model": "mobilenet_v3", "prune": {"ratio": 0.5}, "quantize": {}})  # doctest: +SKIP
>>> cfg.quantize.calibration, cfg.finetune.epochs  # doctest: +SKIP
('minmax', 12)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from compress.edge_friendly import EdgeFriendly
from compress.errors import CompressError
from compress.export import Export
from compress.finetune import Finetune
from compress.measure import MeasureConfig
from compress.prune import Prune
from compress.quantize import Quantize
from compress.train import Recipe
from compress.typed_yaml import ConfigError, build, dump_yaml, from_dict, load_yaml, merge, to_dict

__all__ = ["ConfigError", "RunConfig", "advice", "differences", "dump_yaml", "from_dict", "load_yaml", "merge",
           "migrate", "resolve", "to_dict"]

# Stages a run may leave out: their RunConfig field is None when off.
OPTIONAL_STAGES = ("prune", "edge_friendly", "finetune", "quantize")
# The key that turns each stage on from the command line, and how the command line spells it.
SWITCH_KEYS = {"prune": "prune.ratio", "edge_friendly": "edge_friendly", "quantize": "quantize"}
SWITCH_FLAGS = {"prune": "--prune with a ratio above 0", "edge_friendly": "--edge-friendly", "quantize": "--int8",
                "finetune": "--prune or --edge-friendly"}


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A whole run. ``compress run --config FILE`` replays the ``config.yaml`` of any run folder."""

    model: str = "mobilenet_v3"
    data: str = "fashion-mnist"  # fashion-mnist | digits | cifar10 | path to an image folder
    input_size: int = 32  # images are resized to input_size × input_size
    weights: str = "auto"  # auto | imagenet | none | path to a state_dict
    seed: int = 0
    device: str = "auto"  # training device: auto | cpu | cuda (latency is always measured on the CPU)
    train_threads: int = 0  # torch threads for training; 0 = all cores
    limit_train: int | None = None  # use a seeded subset of the training split (quick experiments, tests)
    limit_test: int | None = None  # likewise for the test split; None = the full held-out split
    val_fraction: float = 0.2  # image folders without train/val: fraction held out for testing
    country: str = "USA"  # ISO 3166 alpha-3 in codecarbon's table, for the carbon intensity; never geolocated
    power_watts: float | None = None  # a measured device power figure; energy = watts × time
    max_drop: float | None = None  # accuracy budget (top-1 points): deploy the most compressed step inside it
    allow_chance: bool = False  # deploy even if the model is at or near chance
    web: bool = False  # also put the phone/browser page (onnxruntime-web, ~15 MB) into edge/web/
    litert: bool = False  # also put model.tflite (and a gated model_int8.tflite) into edge/ for phone apps
    train: Recipe = field(default_factory=Recipe)  # the baseline's training
    prune: Prune | None = None  # None: no pruning
    edge_friendly: EdgeFriendly | None = None  # None: keep the model's activations and SE blocks
    finetune: Finetune | None = field(default_factory=Finetune)  # resolve() drops it when nothing needs recovery
    export: Export = field(default_factory=Export)
    quantize: Quantize | None = None  # None: deploy FP32
    measure: MeasureConfig = field(default_factory=MeasureConfig)

    @property
    def baseline(self) -> Any:
        """Step 0 as a stage (:class:`compress.baseline.Baseline`), built from ``model``, ``weights`` and ``train``."""
        from compress.baseline import Baseline

        return Baseline(model=self.model, weights=self.weights, recipe=self.train)

    def problems(self) -> list[tuple[str, str]]:
        """Every out-of-range value as ``(dotted key, message)``; empty when the config is valid."""
        from compress.energy import country_problem
        from compress.heads import NAMED_WEIGHTS, user_weights_path
        from compress.models import resolve_name

        out: list[tuple[str, str]] = []
        try:
            resolve_name(self.model)
        except CompressError as e:
            out.append(("model", str(e)))
        if self.weights not in NAMED_WEIGHTS:
            try:
                user_weights_path(self.weights)  # a missing file fails now, not once the data set has loaded
            except CompressError as e:
                out.append(("weights", str(e)))
        for name in ("input_size", "seed", "train_threads"):
            if getattr(self, name) < 0:
                out.append((name, f"{name} must not be negative, got {getattr(self, name)}"))
        for name in ("limit_train", "limit_test"):
            v = getattr(self, name)
            if v is not None and v < 1:
                out.append((name, f"{name} must be at least 1 (or null for all), got {v}"))
        if not 0 < self.val_fraction < 1:
            out.append(("val_fraction", f"val_fraction must be in (0, 1), got {self.val_fraction}"))
        if self.max_drop is not None and self.max_drop < 0:
            out.append(("max_drop", f"max_drop must not be negative, got {self.max_drop}"))
        if self.power_watts is not None and not self.power_watts > 0:
            out.append(("power_watts", f"power_watts must be positive, got {self.power_watts}"))
        bad_country = country_problem(self.country)
        if bad_country:
            out.append(("country", bad_country))
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                out += _section_problems(f.name, section)
        return out

    def check(self) -> None:
        """Validate everything cheap before any expensive work starts; all problems in one error."""
        problems = self.problems()
        if problems:
            raise ConfigError([message for _, message in problems])


def _section_problems(name: str, section: Any) -> list[tuple[str, str]]:
    """A stage config's own check, pinned to the field at fault: each field that differs from the default is
    checked alone on top of the defaults, so every bad field is named (``train.epochs``), not just the first."""
    try:
        section.check()
        return []
    except CompressError as e:
        whole = str(e)
    default = type(section)()
    found = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if value == getattr(default, f.name):
            continue
        try:
            dataclasses.replace(default, **{f.name: value}).check()
        except CompressError as e:
            found.append((f"{name}.{f.name}", str(e)))
    return found or [(name, whole)]  # only the combination is wrong: name the section


def advice(cfg: RunConfig) -> list[tuple[str, str]]:
    """Valid but risky settings, as ``(step name, warning)``: the pipeline shows them as warnings of that step.

    >>> advice(resolve(overrides={"prune": {"ratio": 0.5}, "finetune": {"epochs": 2}, "quantize": {}}))  # doctest: +SKIP
    [('finetune', 'only 1 of 2 recovery epochs is quantization-aware ...')]
    """
    out = []
    ft, q = cfg.finetune, cfg.quantize
    if ft is not None and q is not None:
        default_qa = Finetune().quant_aware_epochs
        epochs = ft.recovery_epochs
        if ft.quant_aware_epochs >= epochs:
            out.append(("finetune", f"all {epochs} recovery epochs are quantization-aware (quant_aware_epochs "
                                    f"{ft.quant_aware_epochs}): none recovers in float first, which costs accuracy; "
                                    "keep quant_aware_epochs at most half of the epochs"))
        elif ft.quant_aware_epochs == 0 and epochs >= 2:
            out.append(("finetune", "no recovery epoch is quantization-aware (finetune.quant_aware_epochs is 0, as in "
                                    "the config.yaml of a run without --int8): INT8 may lose more accuracy; set "
                                    f"finetune.quant_aware_epochs (default {default_qa}) in the YAML"))
        elif ft.quant_aware_epochs < default_qa and ft.quant_aware_epochs == epochs // 2:
            out.append(("finetune", f"only {ft.quant_aware_epochs} of {epochs} recovery epochs "
                                    f"{'is' if ft.quant_aware_epochs == 1 else 'are'} quantization-aware (at most half "
                                    "are, so that float recovery comes first): INT8 may lose more accuracy; "
                                    f"--finetune-epochs {2 * default_qa} allows the default {default_qa}"))
    if ft is None and (cfg.prune is not None or cfg.edge_friendly is not None):
        change = "pruning" if cfg.prune is not None else "the edge-friendly swap"
        out.append(("finetune", f"no recovery fine-tuning after {change} (finetune: null): accuracy stays where "
                                "the structural change left it, often near chance"))
    if cfg.edge_friendly is not None and q is None:
        out.append(("edge_friendly", "the edge-friendly swap pays off in INT8 (hardswish and SiLU have no fused "
                                     "INT8 kernel); without --int8 it costs accuracy for little FP32 speed"))
    return out


# ------------------------------------------------------------------------------------------------ dict ↔ config

def migrate(data: dict, problems: list[str] | None = None, where: str = "") -> dict:
    """One layer (YAML or overrides) in the current schema.

    Version 1 wrote ``int8: true|false`` and ``edge_friendly: {enabled: ...}``; now a stage is on when its
    section is a mapping and off when it is null. ``true``/``false`` for a stage section mean on with the
    defaults / off. A whole prune section without ``allocation`` (a replayed config.yaml from before the
    sensitivity scan) keeps that run's uniform allocation.
    """
    problems = [] if problems is None else problems
    d = dict(data)
    if "int8" in d:
        int8 = d.pop("int8")
        if not isinstance(int8, bool):
            problems.append(f"{where}int8 must be true or false, got {int8!r} ({type(int8).__name__})")
        elif int8:
            d["quantize"] = d.get("quantize") if isinstance(d.get("quantize"), dict) else {}
        else:
            d["quantize"] = None
    ef = d.get("edge_friendly")
    if isinstance(ef, dict) and "enabled" in ef:
        ef = dict(ef)
        enabled = ef.pop("enabled")
        if not isinstance(enabled, bool):
            problems.append(f"{where}edge_friendly.enabled must be true or false, got {enabled!r}")
        d["edge_friendly"] = ef if enabled else None
    for name in OPTIONAL_STAGES:
        if isinstance(d.get(name), bool):
            d[name] = {} if d[name] else None
    p = d.get("prune")
    if isinstance(p, dict) and "taylor_batches" in p and "allocation" not in p:
        # a run folder's config.yaml written before the sensitivity scan: that run pruned every layer alike
        d["prune"] = {**p, "allocation": "uniform"}
    return d


def _implied(d: dict) -> dict:
    """Make implied settings explicit: prune ratio 0 is no prune stage; no structural change, nothing to recover;
    quantization-aware epochs only with a quantize stage, and at most half of the recovery epochs."""
    d = dict(d)
    p = d.get("prune")
    if isinstance(p, dict) and p.get("ratio", Prune().ratio) == 0:
        d["prune"] = None
    if d.get("prune") is None and d.get("edge_friendly") is None:
        d["finetune"] = None
    ft = d.get("finetune")
    if isinstance(ft, dict):
        ft = dict(ft)
        epochs = ft.get("epochs")
        epochs = Finetune().recovery_epochs if epochs is None else epochs
        qa = ft.get("quant_aware_epochs", Finetune().quant_aware_epochs)
        if d.get("quantize") is None:
            qa = 0
        elif type(epochs) is int and type(qa) is int and epochs >= 1:
            qa = min(qa, epochs // 2)  # the first half recovers in float (issue #16.10)
        ft["quant_aware_epochs"] = qa
        d["finetune"] = ft
    return d


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d} if prefix else {}
    out: dict[str, Any] = {prefix: d} if prefix else {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _without(d: dict, keys: set[str], flags: Mapping[str, str]) -> dict:
    """``d`` without the dotted ``keys``. A stage section whose every key went goes too, unless its own switch
    (``--int8`` sets ``quantize``) was given: options alone never turn a stage on."""
    out = {}
    for k, v in d.items():
        if not isinstance(v, dict):
            if k not in keys:
                out[k] = v
            continue
        inner = {ik: iv for ik, iv in v.items() if f"{k}.{ik}" not in keys}
        if inner or len(inner) == len(v) or k in flags:
            out[k] = inner
    return out


def _needs(stage: str, flag: str, base: dict, yaml_path: Path | None) -> str:
    if stage == "edge_friendly":
        return f"{flag} is part of --edge-friendly: add --edge-friendly"
    if stage == "finetune" and (base.get("prune") is not None or base.get("edge_friendly") is not None):
        return (f"{flag} needs the finetune stage, which {yaml_path or 'the config'} turns off (finetune: null): "
                "remove that line")
    if stage == "finetune":
        return (f"{flag} needs {SWITCH_FLAGS[stage]}: recovery fine-tuning only runs after a structural change "
                "to recover from")
    return f"{flag} needs {SWITCH_FLAGS[stage]}"


def resolve(yaml_path: Path | None = None, overrides: dict | None = None, *,
            flags: Mapping[str, str] | None = None) -> RunConfig:
    """defaults < YAML < overrides, migrated, with implied settings made explicit, and validated.

    ``overrides`` has the YAML's shape (a stage section turns the stage on). ``flags`` says which command-line
    flag set each override key (``{"quantize.calibration": "--calibration", "quantize": "--int8"}``): errors name
    the flag, and a flag for an option of a stage that is off is an error ("--calibration needs --int8") rather
    than turning the stage on. Every problem is reported at once, one line each.
    """
    flags = dict(flags or {})
    problems: list[str] = []
    y: dict = {}
    if yaml_path is not None:
        y = migrate(load_yaml(yaml_path), problems, f"{yaml_path}: ")
        trial: list[str] = []
        build(RunConfig, merge(to_dict(RunConfig()), y), "", trial)  # unknown keys and wrong types
        problems += [f"{yaml_path}: {p}" for p in trial]
    o = migrate(overrides or {}, problems)
    trial = []
    build(RunConfig, merge(to_dict(RunConfig()), o), "", trial)
    problems += [_from_flag(p, flags) for p in trial]
    if problems:
        raise ConfigError(problems)

    defaults = to_dict(RunConfig())
    options = {k for k in flags if k.split(".")[0] in OPTIONAL_STAGES and k != SWITCH_KEYS.get(k.split(".")[0])}
    base = _implied(merge(merge(defaults, y), _without(o, options, flags)))
    for k in sorted(options):
        stage = k.split(".")[0]
        if base.get(stage) is None:
            problems.append(_needs(stage, flags[k], base, yaml_path))
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))

    data = _implied(merge(merge(defaults, y), o))
    cfg = from_dict(RunConfig, data)
    yaml_keys = set(_flatten(y))
    for key, message in cfg.problems():
        problems.append(f"{_source(key, flags, yaml_path, yaml_keys)}: {message}")
    if problems:
        raise ConfigError(problems)
    return cfg


def _from_flag(problem: str, flags: Mapping[str, str]) -> str:
    key = problem.split(" ", 1)[0]
    return f"{flags[key]}: {problem}" if key in flags else problem


def _source(key: str, flags: Mapping[str, str], yaml_path: Path | None, yaml_keys: set[str]) -> str:
    """Where a key's value came from: the flag that set it, else the YAML file and key, else the key."""
    if key in flags:
        return flags[key]
    under = [f for k, f in flags.items() if k.startswith(key + ".")]
    if under:
        return under[0]
    if yaml_path is not None and (key in yaml_keys or any(k.startswith(key + ".") for k in yaml_keys)):
        return f"{yaml_path}: {key}"
    return key


def differences(a: RunConfig, b: RunConfig) -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` for every setting that differs; a stage on in one and off in
    the other is one entry for the stage."""
    fa, fb = _flatten(to_dict(a)), _flatten(to_dict(b))
    out = []
    for k in fa.keys() | fb.keys():
        va, vb = fa.get(k), fb.get(k)
        if isinstance(va, dict) or isinstance(vb, dict):
            if (va is None) != (vb is None):
                out.append((k, va, vb))
            continue
        parent = k.rsplit(".", 1)[0] if "." in k else None
        if parent and (fa.get(parent) is None) != (fb.get(parent) is None):
            continue  # reported once, as the stage
        if va != vb:
            out.append((k, va, vb))
    return sorted(out)
