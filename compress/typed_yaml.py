"""Typed YAML: dataclasses built from plain dicts (what ``yaml.safe_load`` gives), every problem collected.

Unknown keys and wrong types are errors that name the dotted key; all of them are reported at once, one line each,
as a :class:`ConfigError`. :mod:`compress.config` builds ``RunConfig`` with it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from compress.errors import CompressError


class ConfigError(CompressError):
    """One or more config problems, each a complete line that names the file or flag and the key."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a plain dict, rejecting unknown keys and wrong types (all of them at once).

    ``where`` is the dotted key path of ``data`` (empty at the top), used in error messages.
    """
    problems: list[str] = []
    obj = build(cls, data, where, problems)
    if problems:
        raise ConfigError(problems)
    return obj


def build(cls: type, data: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"{where or 'the config'} must be a mapping of keys to values, got {data!r}")
        return None
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in sorted(set(data) - set(names), key=str):
        problems.append(f"unknown key {where + '.' if where else ''}{k}: valid keys "
                        f"{'in ' + where + ' ' if where else ''}are {', '.join(sorted(names))}")
    before = len(problems)
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k, problems) for k, v in data.items() if k in names}
    if len(problems) > before or set(data) - set(names):
        return None
    try:
        return cls(**kwargs)
    except TypeError as e:
        problems.append(f"{where}: {e}")
        return None


def _coerce(tp: Any, value: Any, where: str, problems: list[str]) -> Any:
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where, problems)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            trial: list[str] = []
            out = _coerce(a, value, where, trial)
            if not trial:
                return out
            if dataclasses.is_dataclass(a) and isinstance(value, dict):
                problems += trial  # a mapping for a stage: its own key errors are the helpful ones
                return None
        problems.append(f"{where} must be {_type_name(tp)}, got {value!r}")
        return None
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    problems.append(f"{where} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return None


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "a mapping of its settings"
    args = typing.get_args(tp)
    if args:
        if type(None) in args and any(dataclasses.is_dataclass(a) for a in args):
            return "a mapping of its settings, or null (off)"
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


# ------------------------------------------------------------------------------------------------ YAML

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
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        ctx, ctx_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if ctx and ctx_mark is not None:  # e.g. "while parsing a flow sequence" that never closed
            what += f" ({ctx} that starts at line {ctx_mark.line + 1}, column {ctx_mark.column + 1})"
        raise CompressError(f"{path} is not valid YAML{where}: {what}; fix the file there") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CompressError(f"{path} must hold a mapping of keys to values (like `model: mobilenet_v3`)")
    return data


def dump_yaml(cfg: Any) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge: ``override`` wins; nested stage settings merge key by key."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ------------------------------------------------------------------------------------------------ resolve
