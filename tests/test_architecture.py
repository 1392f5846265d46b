"""The package's shape: no import cycle among compress modules (imports inside functions count), one stage
sequence that everything derives from, and a toy stage added with one file's worth of code."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "compress"


def own_imports(path: Path) -> set[str]:
    """compress modules imported by ``path``, anywhere in the file except ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for sub in node.body for n in ast.walk(sub)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "compress":
            out |= {f"compress.{a.name}" for a in node.names} if node.module == "compress" else {node.module}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("compress.")}
    return out


def import_graph() -> dict[str, set[str]]:
    modules = {f"compress.{p.stem}": p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {name: {m for m in own_imports(p) if m in modules and m != name} for name, p in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a list of modules, or [] (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str]:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (cycle := visit(w)):
                return cycle
        state[v] = 2
        stack.pop()
        return []

    for v in sorted(graph):
        if v not in state and (cycle := visit(v)):
            return cycle
    return []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 20  # the walk really found the package
    assert find_cycle(graph) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]


def test_stage_names_titles_and_run_folder_ownership_derive_from_the_sequence():
    from compress.chain import STAGE_NAMES, STAGES, TITLES
    from compress.config import RunConfig
    from compress.rundir import OWNED

    fields = {f.name for f in dataclasses.fields(RunConfig)} | {"baseline"}
    for stage in STAGES:
        assert stage.name in fields, f"{stage.name} has no RunConfig field"
        assert stage.accepts in ("none", "torch", "onnx") and stage.produces in ("torch", "onnx")
        assert TITLES[stage.name] == stage.title
        assert stage.name in OWNED
    assert STAGE_NAMES[0] == "baseline" and "export" in STAGE_NAMES


def test_the_chain_is_checked_by_declared_kinds_before_any_work():
    from compress.chain import check_chain
    from compress.config import resolve
    from compress.errors import CompressError
    from compress.export import Export
    from compress.prune import Prune
    from compress.quantize import Quantize

    base = resolve().baseline
    with pytest.raises(CompressError, match="quantize needs an ONNX model but gets a torch model: put export before"):
        check_chain([base, Prune(ratio=0.5), Quantize()])
    with pytest.raises(CompressError, match="prune needs a torch model but gets an ONNX model: put it before export"):
        check_chain([base, Export(), Prune(ratio=0.5)])
    with pytest.raises(CompressError, match="keep the export stage"):
        check_chain([base, Prune(ratio=0.5)])
    check_chain([base, Prune(ratio=0.5), Export(), Quantize()])  # a valid chain passes


def test_one_rule_switches_every_stage():
    from compress.chain import build_chain
    from compress.config import resolve

    assert [s.name for s in build_chain(resolve())] == ["baseline", "export"]
    full = resolve(overrides={"prune": {"ratio": 0.5}, "edge_friendly": {}, "quantize": {}})
    assert [s.name for s in build_chain(full)] == ["baseline", "prune", "edge_friendly", "finetune", "export",
                                                  "quantize"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sparsify:
    """docs/adding_a_stage.md's worked example, defined outside the package: zero the smallest weights."""

    fraction: float = 0.3

    name = "sparsify"
    title = "zeroing small weights"
    accepts = "torch"
    produces = "torch"

    def check(self) -> None:
        assert 0 < self.fraction < 1

    def __call__(self, model, ctx):
        import copy

        import torch
        import torch.nn as nn

        model = copy.deepcopy(model)
        zeroed = 0
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    k = int(self.fraction * m.weight.numel())
                    if k:
                        mask = m.weight.abs() <= m.weight.abs().flatten().kthvalue(k).values
                        zeroed += int(mask.sum())
                        m.weight[mask] = 0
        ctx.note(self.name, weights_zeroed=zeroed)
        return model.eval()


@pytest.mark.slow
def test_a_toy_stage_runs_through_the_whole_pipeline(tmp_path):
    from compress.chain import build_chain
    from compress.config import resolve
    from compress.pipeline import run
    from compress.records import RunReport

    from tests.helpers import DIGITS_TRAIN

    cfg = resolve(overrides={"model": "tiny_mobilenet_v3", "data": "digits", "train": DIGITS_TRAIN,
                             "measure": {"min_runs": 20, "min_seconds": 0.05, "throughput_seconds": 0.05,
                                         "warmup_runs": 2}})
    chain = build_chain(cfg)
    chain.insert(1, Sparsify(fraction=0.3))  # after the baseline, before export

    report = run(cfg, tmp_path / "run", chain=chain)

    assert [s.step for s in report.steps] == ["baseline", "sparsify", "export"]
    toy = report.step("sparsify")
    assert toy.kind == "torch" and toy.stage == {"fraction": 0.3}
    assert toy.notes["weights_zeroed"] > 0
    assert (tmp_path / "run" / toy.artifact).is_file() and toy.artifact.startswith("sparsify/")
    assert toy.metrics.params == report.baseline.metrics.params  # zeroed, not removed
    assert 0 < toy.metrics.top1_pct <= 100 and toy.metrics.latency_ms_median > 0
    saved = RunReport.load(tmp_path / "run")
    assert saved.step("sparsify").notes["weights_zeroed"] == toy.notes["weights_zeroed"]
    assert (tmp_path / "run" / "edge" / "model.onnx").is_file()
