"""compress: turn a trained CNN into a small, fast, measured edge model.

>>> from compress import resolve, run
>>> report = run(resolve(overrides={"model": "mobilenet_v3", "quantize": {}, "prune": {"ratio": 0.5}}), "runs/demo")  # doctest: +SKIP
"""

from compress.api import run_model
from compress.config import RunConfig, resolve
from compress.edge_friendly import EdgeFriendly
from compress.errors import CompressError
from compress.core import OnnxModel
from compress.export import Export
from compress.finetune import Finetune
from compress.measure import measure
from compress.models import create_model, list_models, register_model
from compress.pipeline import run
from compress.prune import Prune
from compress.records import Metrics, RunReport, StepReport
from compress.quantize import Quantize

__version__ = "0.2.0"
__all__ = [
    "CompressError", "EdgeFriendly", "Export", "Finetune", "Metrics", "OnnxModel", "Prune", "Quantize", "RunConfig",
    "RunReport", "StepReport",
    "create_model", "list_models", "measure", "register_model", "resolve", "run", "run_model",
]
