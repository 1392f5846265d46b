"""The stage sequence: one literal, typed tuple, and the chain a config switches on.

Each entry is a stage class that declares its ``name`` (also its field in :class:`~compress.config.RunConfig`
and its run-folder subfolder), its ``title`` (what the terminal says), and the model kinds it ``accepts`` and
``produces``. A stage runs when its config field is not ``None``: that one rule switches every stage. Adding a
stage is one new module and one entry here, plus its field in RunConfig (see docs/adding_a_stage.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compress.baseline import Baseline
from compress.core import KIND_WORDS, Stage
from compress.edge_friendly import EdgeFriendly
from compress.errors import CompressError
from compress.export import Export
from compress.finetune import Finetune
from compress.prune import Prune
from compress.quantize import Quantize

if TYPE_CHECKING:
    from compress.config import RunConfig

STAGES: tuple[type, ...] = (Baseline, Prune, EdgeFriendly, Finetune, Export, Quantize)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
TITLES: dict[str, str] = {s.name: s.title for s in STAGES}


def build_chain(cfg: "RunConfig") -> list[Stage]:
    """The stages ``cfg`` switches on, in sequence order: every stage whose config field is not None."""
    return [stage for cls in STAGES if (stage := getattr(cfg, cls.name)) is not None]


def check_chain(chain: list[Any]) -> None:
    """Each stage must get the kind of model it accepts; checked before any work starts."""
    kind = "none"
    for stage in chain:
        if stage.accepts != kind:
            fix = {"onnx": " put export before it", "torch": " put it before export"}.get(stage.accepts, "")
            raise CompressError(f"{stage.name} needs {KIND_WORDS[stage.accepts]} but gets {KIND_WORDS[kind]}:{fix}")
        kind = stage.produces
    if kind != "onnx":
        raise CompressError("the chain must end in an ONNX model for the edge bundle: keep the export stage")
