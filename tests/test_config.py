"""Config: defaults < YAML < flags, a lossless YAML round-trip, and clear errors for bad keys and types."""

from __future__ import annotations

import pytest

from compress.cli import _parser, overrides_from_args
from compress.config import RunConfig, dump_yaml, resolve
from compress.errors import CompressError
from compress.prune import Prune


def test_yaml_round_trip_replays_the_same_config(tmp_path):
    cfg = resolve(overrides={"model": "mobilenet_v2", "int8": True, "prune": {"ratio": 0.3, "importance": "taylor"},
                             "train": {"epochs": 7}, "measure": {"threads": 2}})
    f = tmp_path / "config.yaml"
    f.write_text(dump_yaml(cfg))

    replayed = resolve(f)

    assert replayed == cfg
    assert replayed.prune == Prune(ratio=0.3, importance="taylor")
    assert replayed.train.epochs == 7


def test_precedence_defaults_then_yaml_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: efficientnet_b0\nprune:\n  ratio: 0.3\n  steps: 2\ntrain:\n  epochs: 5\n")
    args = _parser().parse_args(["run", "--config", str(f), "--prune", "0.6", "--int8"])

    cfg = resolve(args.config, overrides_from_args(args))

    assert cfg.model == "efficientnet_b0"  # from YAML
    assert cfg.prune.ratio == 0.6  # flag beats YAML
    assert cfg.prune.steps == 2  # YAML beats default, untouched by the flag
    assert cfg.train.epochs == 5
    assert cfg.int8 is True
    assert cfg.finetune == RunConfig().finetune  # default


@pytest.mark.parametrize("text, message", [
    ("modle: mobilenet_v3\n", "bad.yaml: unknown key modle: valid keys are"),
    ("prune:\n  ratoi: 0.5\n", "unknown key prune.ratoi: valid keys in prune are"),
    ("prune:\n  ratio: half\n", "prune.ratio must be a number"),
    ("train:\n  epochs: 2.5\n", "train.epochs must be an integer"),
    ("int8: 'yes'\n", "int8 must be true or false"),
    ("- a\n- b\n", "must hold a mapping"),
    ("model: [unclosed\n", "not valid YAML"),
    ("prune: 0.5\n", "must be a mapping"),
])
def test_bad_yaml_names_the_problem(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(CompressError, match=message):
        resolve(f)


def test_validation_happens_before_any_work():
    with pytest.raises(CompressError, match=r"prune ratio must be in \[0, 1\)"):
        resolve(overrides={"prune": {"ratio": 1.0}})
    with pytest.raises(CompressError, match="unknown model 'resnet9000'.*mobilenet_v3_small"):
        resolve(overrides={"model": "resnet9000"})
    with pytest.raises(CompressError, match="epochs must be at least 1"):
        resolve(overrides={"finetune": {"epochs": 0}})
