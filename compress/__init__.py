"""compress: turn a trained CNN into a small, fast, measured edge model.

>>> from compress import resolve, run
>>> report = run(resolve(overrides={"model": "mobilenet_v3", "int8": True, "prune": {"ratio": 0.5}}), "runs/demo")  # doctest: +SKIP
"""

from compress.config import RunConfig, resolve
from compress.edge_friendly import EdgeFriendly
from compress.errors import CompressError
from compress.export import Export, OnnxModel
from compress.finetune import Finetune
from compress.measure import Metrics, measure
from compress.models import create_model, list_models, register_model
from compress.pipeline import run
from compress.prune import Prune
from compress.quantize import Quantize

__version__ = "0.1.0"
__all__ = [
    "CompressError", "EdgeFriendly", "Export", "Finetune", "Metrics", "OnnxModel", "Prune", "Quantize", "RunConfig",
    "create_model", "list_models", "measure", "register_model", "resolve", "run",
]
