"""Step 0: build the model, adapt its head, and train it, or load it from the baseline cache.

The cache key covers the model, weights, data fingerprint, input size, the effective recipe, the seed and
the torch version, so another compression setting of the same job reuses the same trained baseline.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress import checkpoint as ckpt
from compress import distributed
from compress.core import Context, cache_dir
from compress.errors import CompressError
from compress.heads import fit_head
from compress.lr_range import resolve_lr
from compress.models import create_model, model_fingerprint
from compress.recipe import Recipe
from compress.train import fit

if TYPE_CHECKING:
    import torch.nn as nn


@dataclass(frozen=True, kw_only=True)
class Baseline:
    """Build ``model`` with a head for the data set's classes, then train it with ``recipe`` (or reuse the cache).

    >>> trained = Baseline(model="mobilenet_v3", weights="auto", recipe=Recipe())(None, ctx)  # doctest: +SKIP
    """

    model: str
    weights: str
    recipe: Recipe

    name = "baseline"
    title = "preparing the baseline"
    accepts = "none"
    produces = "torch"

    def check(self) -> None:
        self.recipe.check()

    def effective_recipe(self, init: str, train_images: int) -> tuple[Recipe, list[str]]:
        """The recipe adapted to the data size and the init (:meth:`Recipe.adapted`), and why."""
        return self.recipe.adapted(train_images=train_images, pretrained=is_pretrained(init))

    def cache_key(self, ctx: Context, recipe: Recipe) -> str:
        import torch

        code = module_fingerprint(ctx.given_model) if ctx.given_model is not None else model_fingerprint(self.model)
        blob = json.dumps({"model": self.model, **({"code": code} if code else {}),
                           "weights": self.weights, "data": ctx.data.fingerprint,
                           "classes": ctx.data.classes, "input_size": ctx.data.input_size,
                           "recipe": recipe.cache_fields(), "seed": ctx.seed,
                           "torch": torch.__version__.split("+")[0]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def cached_file(self, ctx: Context, recipe: Recipe) -> Path:
        return cache_dir() / "baselines" / f"{self.cache_key(ctx, recipe)}.pt"

    def build(self, ctx: Context) -> tuple["nn.Module", str]:
        import torch

        torch.manual_seed(ctx.seed)  # the random init of the new layers is part of what the seed fixes
        if ctx.given_model is not None:
            return given_model(ctx.given_model, len(ctx.data.classes), pretrained=ctx.given_pretrained)
        return create_model(self.model, num_classes=len(ctx.data.classes), weights=self.weights)

    def __call__(self, model: None, ctx: Context) -> "nn.Module":
        net, init = self.build(ctx)
        recipe, why = self.effective_recipe(init, int(ctx.data.train_x.shape[0]))
        if recipe.epochs == 0:
            ctx.note(self.name, init=init, recipe=dataclasses.asdict(recipe), trained="no (epochs 0: as given)")
            return net.eval()
        cached = self.cached_file(ctx, recipe)
        meta_file = cached.with_suffix(".json")
        if cached.exists() and meta_file.exists():
            if ctx.progress:
                ctx.progress.step_started(self.name, "loading the cached baseline")
            ckpt.load_state_dict(cached, net)
            meta = json.loads(meta_file.read_text())
            ctx.note(self.name, init=meta.get("init", init), cache=str(cached), cache_hit=True,
                     original_training=meta.get("work"), recipe=meta.get("recipe", dataclasses.asdict(recipe)),
                     recipe_adapted=why)
            return net.eval()
        if ctx.progress:
            ctx.progress.step_started(self.name, f"training the baseline ({recipe.epochs} epochs)")
        short = recipe.too_short(train_images=int(ctx.data.train_x.shape[0]), pretrained=is_pretrained(init))
        if short:
            ctx.warn(self.name, short)
        warn = functools.partial(ctx.warn, self.name)
        # The LR is settled here, not inside fit, so that the record (and recovery fine-tuning) knows the peak LR.
        recipe = resolve_lr(net, ctx.data, recipe, device=ctx.device, seed=ctx.seed,
                            checkpoint=ctx.checkpoint(self.name), warn=warn, pretrained=is_pretrained(init))
        trained = fit(net, ctx.data, recipe, seed=ctx.seed, device=ctx.device, on_epoch=ctx.epoch_done,
                      on_batch=ctx.batch_done, checkpoint=ctx.checkpoint(self.name), on_warning=warn)
        if not distributed.is_main():  # distributed (#11): the other ranks trained beside rank 0, which caches it
            return trained
        ckpt.save(ckpt.model_record(trained), cached)
        meta = {"init": init, "model": self.model, "recipe": dataclasses.asdict(recipe), "data": ctx.data.summary()}
        ckpt.atomic_write(meta_file, lambda p: p.write_text(json.dumps(meta, indent=1)))
        ctx.note(self.name, init=init, cache=str(cached), cache_hit=False, recipe=dataclasses.asdict(recipe),
                 recipe_adapted=why)
        return trained

    def remember_work(self, ctx: Context, work: dict[str, Any]) -> None:
        """Store the training's time and CO2 beside the cached weights, so later runs can report it."""
        notes = ctx.notes.get(self.name, {})
        if not notes.get("cache") or notes.get("cache_hit"):
            return
        meta_file = Path(notes["cache"]).with_suffix(".json")
        if meta_file.exists():
            meta = json.loads(meta_file.read_text())
            meta["work"] = work
            ckpt.atomic_write(meta_file, lambda p: p.write_text(json.dumps(meta, indent=1)))


def is_pretrained(init: str) -> bool:
    """Whether an init description (from :func:`compress.models.create_model` or :func:`given_model`) means trained
    weights to protect: ImageNet or a weights file, or a caller's network marked pretrained. A factory's or a caller's
    network is trained as from scratch unless said otherwise."""
    return init.startswith(("ImageNet", "loaded from")) or "(pretrained)" in init


def given_model(module: "nn.Module", num_classes: int, *, pretrained: bool = False) -> tuple["nn.Module", str]:
    """A copy of the caller's own network with a classifier for ``num_classes`` (its last Linear is replaced when
    the count differs). Training it or not is the recipe's business (``train.epochs: 0`` keeps its weights)."""
    import copy

    import torch.nn as nn

    if not isinstance(module, nn.Module):
        raise CompressError(f"the model must be a torch nn.Module, got {type(module).__name__}")
    net = copy.deepcopy(module).cpu()
    head = fit_head(net, num_classes, type(module).__name__, factory_took_classes=False)
    return net, f"given by the caller ({type(module).__name__}){' (pretrained)' if pretrained else ''}{head}"


def module_fingerprint(module: "nn.Module") -> str:
    """sha256 of a module's structure and weights: a changed network never reuses another's cached baseline."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return hashlib.sha256(repr(module).encode() + buf.getvalue()).hexdigest()[:16]
