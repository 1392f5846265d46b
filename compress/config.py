"""``RunConfig``: everything a run needs, loadable from YAML and written beside every run.

Precedence is defaults < YAML (``--config``) < command-line flags. Unknown keys and wrong types
are errors that name the key. The stages are their own config: ``RunConfig.prune`` *is* a
:class:`~compress.prune.Prune`, so ``dataclasses.asdict`` of it goes straight into the report.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.edge_friendly import EdgeFriendly
from compress.errors import CompressError
from compress.export import Export
from compress.finetune import Finetune
from compress.measure import MeasureConfig
from compress.prune import Prune
from compress.quantize import Quantize
from compress.train import Recipe


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
    country: str = "USA"  # ISO 3166 alpha-3, for codecarbon's carbon intensity; never geolocated
    power_watts: float | None = None  # a measured device power figure; energy = watts × time
    int8: bool = False
    max_drop: float | None = None  # accuracy budget (top-1 points): deploy the most compressed step inside it
    web: bool = False  # also put the phone/browser page (onnxruntime-web, ~15 MB) into edge/web/
    train: Recipe = field(default_factory=Recipe)
    prune: Prune = field(default_factory=lambda: Prune(ratio=0.0))
    edge_friendly: EdgeFriendly = field(default_factory=EdgeFriendly)
    finetune: Finetune = field(default_factory=Finetune)
    export: Export = field(default_factory=Export)
    quantize: Quantize = field(default_factory=Quantize)
    measure: MeasureConfig = field(default_factory=MeasureConfig)

    def check(self) -> None:
        """Validate everything cheap before any expensive work starts."""
        from compress.models import resolve_name

        resolve_name(self.model)
        for name in ("input_size", "seed", "train_threads"):
            if getattr(self, name) < 0:
                raise CompressError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("limit_train", "limit_test"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise CompressError(f"{name} must be at least 1 (or null for all), got {v}")
        if not 0 < self.val_fraction < 1:
            raise CompressError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.max_drop is not None and self.max_drop < 0:
            raise CompressError(f"max_drop must not be negative, got {self.max_drop}")
        if self.power_watts is not None and not self.power_watts > 0:
            raise CompressError(f"power_watts must be positive, got {self.power_watts}")
        if len(self.country) != 3 or not self.country.isalpha():
            raise CompressError(f"country must be an ISO 3166 alpha-3 code such as USA, FRA or DEU, got {self.country!r}")
        self.train.check()
        self.prune.check()
        self.edge_friendly.check()
        self.finetune.check()
        self.export.check()
        self.quantize.check()
        self.measure.check()


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a plain dict, rejecting unknown keys and wrong types.

    ``where`` is the dotted key path of ``data`` (empty at the top), used in error messages.
    """
    if not isinstance(data, dict):
        raise CompressError(f"{where or 'the config'} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CompressError(f"unknown key {where + '.' if where else ''}{unknown[0]}: valid keys "
                            f"{'in ' + where + ' ' if where else ''}are {', '.join(sorted(names))}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise CompressError(f"{where}: {e}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except CompressError:
                pass
        raise CompressError(f"{where} must be {_type_name(tp)}, got {value!r}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise CompressError(f"{where} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if args:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def load_yaml(path: Path) -> dict:
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise CompressError(f"cannot read config {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CompressError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CompressError(f"{path} must hold a mapping of keys to values (like `model: mobilenet_v3`)")
    return data


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge: ``override`` wins; nested stage settings merge key by key."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve(yaml_path: Path | None = None, overrides: dict | None = None) -> RunConfig:
    """defaults < YAML < overrides (flags), validated."""
    data = to_dict(RunConfig())
    if yaml_path is not None:
        data = merge(data, _check_keys(load_yaml(yaml_path), RunConfig, str(yaml_path)))
    if overrides:
        data = merge(data, overrides)
    cfg = from_dict(RunConfig, data)
    cfg.check()
    return cfg


def _check_keys(data: dict, cls: type, source: str) -> dict:
    try:
        from_dict(cls, merge(to_dict(cls()), data))  # raises on unknown keys / wrong types
    except CompressError as e:
        raise CompressError(f"{source}: {e}") from None
    return data


def dump_yaml(cfg: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
