"""Where to prune: per-group ratios from a sensitivity scan, within the budget of uniform pruning.

Uniform pruning takes ``ratio`` of the channels of every layer group. On small inputs that cuts deepest where a
network is narrowest and its maps are largest: at 32 px, MobileNetV3-small's 16-channel stem and 16- to
40-channel bottlenecks carry every image through 16×16 to 2×2 maps, while its widest layers see 1×1 maps. The
scan prunes each group alone at ``ratio``, re-estimates BatchNorm statistics, and measures how many points of
top-1 that costs on training images (never the test split). Groups that lose more than ``protect_above_pt``
keep all their channels. The others share one higher ratio, the lowest that brings the network's MACs and
parameters down to what uniform pruning at ``ratio`` leaves. So the user's ratio fixes the budget, and the scan
decides where it is spent.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from compress.data import Dataset

    # (model, {root module name: ratio}) -> torch-pruning's MetaPruner; groups not named get the stage's ratio
    Pruner = Callable[["nn.Module", dict[str, float]], Any]

MAX_RATIO = 0.875  # no group loses more than 7 of every 8 channels
RECAL_IMAGES = 256  # BatchNorm statistics for each one-shot pruning: every channel sees 256 maps


@dataclass(frozen=True)
class GroupScan:
    """One layer group pruned alone at the stage's ratio: what it costs in accuracy and what it saves."""

    group: str  # the group's root module, as ``named_modules`` names it
    channels: int
    drop_pt: float  # top-1 points lost on the scan's training images
    macs_saved: int
    params_saved: int


@dataclass(frozen=True)
class Plan:
    """The per-group ratios the scan chose, and the budget they meet."""

    ratio: float  # the stage's ratio, which sets the budget
    protect_above_pt: float
    ratios: dict[str, float]  # root module name → ratio, for every group
    kept: tuple[str, ...]  # groups that keep all their channels
    others_ratio: float
    budget_macs: int  # what uniform pruning at the stage's ratio leaves
    budget_params: int
    macs: int
    params: int
    scans: tuple[GroupScan, ...]

    def note(self, worst: int = 10) -> dict:
        """What the report records: the budget, the kept groups, and the most sensitive groups."""
        ranked = sorted(self.scans, key=lambda s: s.drop_pt, reverse=True)[:worst]
        return {"allocation": "sensitivity", "budget_ratio": self.ratio, "protect_above_pt": self.protect_above_pt,
                "groups_scanned": len(self.scans), "kept_groups": list(self.kept),
                "others_ratio": round(self.others_ratio, 4), "budget_macs": self.budget_macs,
                "budget_params": self.budget_params, "macs": self.macs, "params": self.params,
                "most_sensitive": [{"group": s.group, "channels": s.channels, "drop_pt": round(s.drop_pt, 2),
                                    "macs_saved": s.macs_saved} for s in ranked]}


def plan(model: "nn.Module", data: "Dataset", pruner: "Pruner", *, ratio: float, protect_above_pt: float,
         images: int = 2048, seed: int = 0) -> Plan:
    """Scan every group of ``model`` at ``ratio``, keep the sensitive ones, and fit the others to the budget."""
    size = data.input_size
    budget_macs, budget_params = cost(pruned(model, pruner, {}), size)
    scans = scan(model, data, pruner, ratio=ratio, images=images, seed=seed)
    # the costliest groups per point of budget they would save are kept first, and released last
    kept = sorted((s for s in scans if s.drop_pt > protect_above_pt),
                  key=lambda s: s.drop_pt / max(s.macs_saved / budget_macs + s.params_saved / budget_params, 1e-9),
                  reverse=True)
    while (fit := fit_others(model, pruner, [s.group for s in kept], [s.group for s in scans], ratio,
                             (budget_macs, budget_params), size)) is None:
        kept.pop()  # even the others at MAX_RATIO cannot pay for every kept group: release the cheapest to keep
    others_ratio, ratios, (macs, params) = fit
    return Plan(ratio=ratio, protect_above_pt=protect_above_pt, ratios=ratios, kept=tuple(s.group for s in kept),
                others_ratio=others_ratio, budget_macs=budget_macs, budget_params=budget_params, macs=macs,
                params=params, scans=tuple(scans))


def scan(model: "nn.Module", data: "Dataset", pruner: "Pruner", *, ratio: float, images: int = 2048,
         seed: int = 0) -> list[GroupScan]:
    """Each group pruned alone at ``ratio``: top-1 points lost on training images after BN re-estimation, scored on
    ``images`` training images at 32 px (as many pixels at other sizes, at least 256)."""
    import torch

    from compress.train import evaluate, recalibrate_bn

    size = data.input_size
    n = min(len(data.train_x), max(256, images * 32 * 32 // (size * size)))
    idx = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(seed))[:n]
    x, y = data.train_x[idx], data.train_y[idx]
    macs0, params0 = cost(model, size)
    unpruned = copy.deepcopy(model)  # the reference, its BN statistics estimated as each pruned copy's are
    recalibrate_bn(unpruned, data, images=min(n, RECAL_IMAGES))
    before = evaluate(unpruned, data, 512, images=x, labels=y)
    every = groups(model, pruner)
    out = []
    for group, channels in every:
        one = pruned(model, pruner, {g: (ratio if g == group else 0.0) for g, _ in every})
        recalibrate_bn(one, data, images=min(n, RECAL_IMAGES))
        macs, params = cost(one, size)
        drop = before - evaluate(one, data, 512, images=x, labels=y)
        out.append(GroupScan(group=group, channels=channels, drop_pt=drop, macs_saved=macs0 - macs,
                             params_saved=params0 - params))
    return out


def fit_others(model: "nn.Module", pruner: "Pruner", kept: list[str], every: list[str], ratio: float,
               budget: tuple[int, int], size: int) -> "tuple[float, dict[str, float], tuple[int, int]] | None":
    """The lowest common ratio for the groups not ``kept`` that meets ``budget`` (MACs, params), or None."""

    def ratios(r: float) -> dict[str, float]:
        return {g: (0.0 if g in kept else r) for g in every}

    def meets(r: float) -> "tuple[int, int] | None":
        got = cost(pruned(model, pruner, ratios(r)), size)
        return got if got[0] <= budget[0] and got[1] <= budget[1] else None

    if not kept:  # uniform pruning at ``ratio`` meets the budget by definition
        return ratio, ratios(ratio), budget
    lo, hi = ratio, MAX_RATIO
    if (got := meets(hi)) is None:
        return None
    for _ in range(10):  # to 1/1024 of the range: finer than one channel in any group of fewer than 1,024
        mid = (lo + hi) / 2
        if (at_mid := meets(mid)) is None:
            lo = mid
        else:
            hi, got = mid, at_mid
    return hi, ratios(hi), got


def groups(model: "nn.Module", pruner: "Pruner") -> list[tuple[str, int]]:
    """Every prunable group of ``model`` as (its root module's name, its channels), in torch-pruning's order."""
    copied = copy.deepcopy(model)
    p = pruner(copied, {})
    names = {m: n for n, m in copied.named_modules()}
    return [(names[g[0].dep.target.module], len(g[0].idxs))
            for g in p.DG.get_all_groups(ignored_layers=p.ignored_layers, root_module_types=p.root_module_types)]


def pruned(model: "nn.Module", pruner: "Pruner", ratios: dict[str, float]) -> "nn.Module":
    """A pruned copy of ``model``: each named group at its ratio, unnamed groups at the pruner's own ratio."""
    copied = copy.deepcopy(model)
    pruner(copied, ratios).step()
    return copied.eval()


def cost(model: "nn.Module", size: int) -> tuple[int, int]:
    """(MACs for one image, parameters) of ``model``."""
    from compress.measure import torch_macs

    return torch_macs(model, size), sum(p.numel() for p in model.parameters())

