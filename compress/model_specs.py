"""Models named by a spec instead of a registered name: ``timm:NAME`` (any timm architecture, built
with random weights) and the user's own networks, ``path/to/file.py:factory`` or ``package.module:factory``.

Specs are checked cheaply first (:func:`check_spec`: no network, no user code run), so a typo fails
before any data is loaded; :func:`create_spec` then builds the model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from compress.efficientnet_lite import timm_model
from compress.errors import CompressError
from compress.heads import fit_head, load_user_weights

if TYPE_CHECKING:
    import torch.nn as nn

TIMM_PREFIX = "timm:"


def is_spec(name: str) -> bool:
    """True for ``timm:NAME`` and factory specs (anything with a ``:``), False for registered names."""
    return name.startswith(TIMM_PREFIX) or ":" in name


def check_spec(spec: str) -> None:
    """Raise a CompressError when ``spec`` names no timm model, or no file/module defining its factory."""
    if spec.startswith(TIMM_PREFIX):
        _check_timm_name(spec[len(TIMM_PREFIX):])
    else:
        _check_factory_spec(spec)


def spec_fingerprint(spec: str) -> str:
    """timm's version for ``timm:`` specs; the factory file's sha256 (its code may change under the same
    name) for factory specs, "" when the module has no file."""
    if spec.startswith(TIMM_PREFIX):
        from importlib.metadata import version

        return f"timm {version('timm')}"
    import hashlib
    import importlib.util

    where, _ = _split_factory_spec(spec)
    if _is_file_spec(where):
        path = Path(where).expanduser()
    else:
        origin = importlib.util.find_spec(where).origin
        if origin is None or not Path(origin).is_file():
            return ""
        path = Path(origin)
    return "sha256 " + hashlib.sha256(path.read_bytes()).hexdigest()


def create_spec(spec: str, *, num_classes: int, weights: str) -> tuple["nn.Module", str]:
    """Build the model a spec names, with a ``num_classes`` head; ``weights`` is none, auto or a state_dict path."""
    import torch.nn as nn

    if weights == "imagenet":
        raise CompressError(f"compress has no ImageNet weights for {spec}: use --weights none, or a state_dict "
                            "file with --weights PATH")
    if spec.startswith(TIMM_PREFIX):
        model = timm_model(spec[len(TIMM_PREFIX):], num_classes=num_classes)
        how = f"random init (timm {spec[len(TIMM_PREFIX):]}, trained from scratch)"
    else:
        factory = _import_factory(spec)
        pass_classes = _accepts_num_classes(factory)
        try:
            model = factory(num_classes=num_classes) if pass_classes else factory()
        except Exception as e:  # user code
            raise CompressError(f"model factory {spec} raised {type(e).__name__}: "
                                f"{str(e).splitlines()[0][:150] if str(e) else ''}: fix the factory") from None
        if not isinstance(model, nn.Module):
            raise CompressError(f"model factory {spec} returned {type(model).__name__}, not a torch nn.Module: "
                                "return the network itself")
        how = f"built by {spec}" + (f"(num_classes={num_classes})" if pass_classes else "()")
        how += fit_head(model, num_classes, spec, factory_took_classes=pass_classes)
    if weights in ("none", "auto"):
        return model, how
    return model, load_user_weights(model, weights, num_classes)


def _check_timm_name(arch: str) -> None:
    import timm

    if not arch or not timm.is_model(arch):
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join('timm:' + c for c in close)}?)" if close else ""
        raise CompressError(f"timm has no model {arch!r}{hint}: pick a name from timm.list_models(), "
                            "e.g. timm:mobilenetv4_conv_small")


def _split_factory_spec(spec: str) -> tuple[str, str]:
    where, _, fn = spec.rpartition(":")
    if not where or not fn.isidentifier():
        raise CompressError(f"model {spec!r} is not a factory spec: write path/to/file.py:function or "
                            "package.module:function")
    return where, fn


def _is_file_spec(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def _check_factory_spec(spec: str) -> None:
    """Check without running user code: the file exists and defines the name at top level (read with
    ``ast``), or the module can be found."""
    where, fn = _split_factory_spec(spec)
    if not _is_file_spec(where):
        _check_factory_module(where, spec)
        return
    import ast

    path = Path(where).expanduser()
    if not path.is_file():
        raise CompressError(f"model file {str(path)!r} not found: give path/to/file.py:function")
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as e:
        raise CompressError(f"cannot read model file {path} ({type(e).__name__}: {str(e).splitlines()[0][:100]}): "
                            "fix the file") from None
    defined: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.append(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined += [(a.asname or a.name).split(".")[0] for a in node.names]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined += [t.id for t in targets if isinstance(t, ast.Name)]
    if fn not in defined and "*" not in defined:
        funcs = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]
        raise CompressError(f"{path} has no function {fn!r}: define it, or use one of "
                            f"{', '.join(funcs) or '(no public functions)'}")


def _check_factory_module(where: str, spec: str) -> None:
    import importlib.util

    try:
        found = importlib.util.find_spec(where)
    except (ImportError, ValueError) as e:
        raise CompressError(f"cannot find module {where!r} for model {spec!r} ({type(e).__name__}: {e}): "
                            "install it or give path/to/file.py:function") from None
    if found is None:
        raise CompressError(f"cannot find module {where!r} for model {spec!r}: install it, or give "
                            "path/to/file.py:function")


def _import_factory(spec: str) -> Callable:
    import importlib
    import importlib.util
    import sys
    import zlib

    where, fn = _split_factory_spec(spec)
    _check_factory_spec(spec)
    path = Path(where).expanduser().resolve() if _is_file_spec(where) else None
    mod_name = f"compress_user_model_{zlib.crc32(str(path).encode()):08x}" if path else where
    try:
        if path is not None:
            mspec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(mspec)
            sys.modules[mod_name] = module  # dataclasses and pickle look the module up by name
            mspec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except Exception as e:  # user code: any failure is theirs to fix, named in one line
        if path is not None:
            sys.modules.pop(mod_name, None)
        raise CompressError(f"importing {where} for model {spec!r} failed ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else ''}): fix that file") from None
    factory = getattr(module, fn, None)
    if not callable(factory):
        raise CompressError(f"{where} has no function {fn!r}: check the name after the ':'")
    return factory


def _accepts_num_classes(factory: Callable) -> bool:
    import inspect

    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "num_classes" and p.kind is not p.POSITIONAL_ONLY or p.kind is p.VAR_KEYWORD
               for p in params)
