"""Compress your own network from Python: ``run_model(net, data=..., out=...)``.

The command line takes registry names, ``timm:NAME`` and ``file.py:factory``; this takes an ``nn.Module``
you already have in hand, trained or not, and any data set compress can load (a folder of your photos, a
built-in name, or a :class:`~compress.data.Dataset`).

>>> import torch.nn as nn
>>> from compress import run_model
>>> report = run_model(my_net, data="photos/", out="runs/mine",                     # doctest: +SKIP
...                    prune={"ratio": 0.3}, quantize={}, train={"epochs": 0})      # epochs 0: keep its weights
>>> report.deployed().metrics.top1_pct                                               # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.config import resolve
from compress.data import Dataset
from compress.errors import CompressError
from compress.models import PYTHON_PREFIX
from compress.pipeline import run
from compress.rundir import prepare_run_dir

if TYPE_CHECKING:
    import torch.nn as nn

    from compress.records import RunReport


def run_model(model: "nn.Module", *, data: "str | Path | Dataset", out: "str | Path", pretrained: bool = False,
              config: "str | Path | None" = None, progress: Any = None, force: bool = False,
              **overrides: Any) -> "RunReport":
    """Run the pipeline on ``model``: baseline (trained with ``train``, or as given with ``train={"epochs": 0}``),
    then whatever stages ``config`` / ``overrides`` switch on, measured after every step, into the run folder ``out``.

    ``overrides`` are RunConfig keys, as in YAML: ``prune={"ratio": 0.5}``, ``quantize={}``, ``input_size=64``.
    The network's last ``nn.Linear`` is replaced when its class count differs from the data set's. With
    ``pretrained=True`` its weights count as trained: the recipe fine-tunes it as in transfer learning (head first,
    a lower LR for the backbone); otherwise it trains as from scratch.
    """
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        raise CompressError(f"run_model needs a torch nn.Module, got {type(model).__name__}: for a registry name "
                            "use compress.run(resolve(overrides={'model': NAME}), out)")
    label = f"{PYTHON_PREFIX}{type(model).__name__}"
    given = dict(overrides, model=label)
    dataset = data if isinstance(data, Dataset) else None
    if dataset is None:
        given["data"] = str(data)
    else:
        given.setdefault("input_size", dataset.input_size)
    cfg = resolve(Path(config) if config is not None else None, given)
    with prepare_run_dir(Path(out), force=force):
        return run(cfg, Path(out), progress=progress, model=model, pretrained=pretrained, data=dataset)
