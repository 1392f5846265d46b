"""Config: defaults < YAML < flags, stages off as None, v1 configs migrated, implied settings made explicit,
and every problem named (file or flag, and key), all at once."""

from __future__ import annotations

import pytest
import yaml

from compress.cli import _parser, overrides_from_args
from compress.config import RunConfig, advice, differences, dump_yaml, resolve
from compress.errors import CompressError
from compress.finetune import Finetune
from compress.prune import Prune
from compress.quantize import Quantize


def flags_of(*argv: str):
    """What the CLI passes to resolve() for ``compress run ARGV``."""
    args = _parser().parse_args(["run", *argv])
    overrides, flags = overrides_from_args(args)
    return args.config, overrides, flags


def resolve_flags(*argv: str) -> RunConfig:
    config, overrides, flags = flags_of(*argv)
    return resolve(config, overrides, flags=flags)


def problems_of(excinfo) -> list[str]:
    return getattr(excinfo.value, "problems", [str(excinfo.value)])


# ------------------------------------------------------------------------------------------------ schema

def test_optional_stages_are_none_when_off():
    cfg = resolve()

    assert (cfg.prune, cfg.edge_friendly, cfg.finetune, cfg.quantize) == (None, None, None, None)
    assert cfg.export == RunConfig().export and cfg.allow_chance is False
    assert not hasattr(cfg, "int8")


def test_flags_switch_stages_on_with_their_options():
    cfg = resolve_flags("--prune", "0.5", "--int8", "--calibration", "entropy", "--edge-friendly", "--remove-se",
                        "--finetune-epochs", "10", "--finetune-lr", "0.1", "--lr", "0.3", "--allow-chance")

    assert cfg.prune == Prune(ratio=0.5)
    assert cfg.quantize == Quantize(calibration="entropy")
    assert cfg.edge_friendly is not None and cfg.edge_friendly.remove_se is True
    assert cfg.finetune == Finetune(epochs=10, lr=0.1)  # quant_aware_epochs 4 ≤ 10 // 2 stays
    assert cfg.train.lr == 0.3 and cfg.allow_chance is True


def test_prune_zero_means_no_prune_stage_and_nothing_to_recover():
    cfg = resolve_flags("--prune", "0", "--int8")

    assert cfg.prune is None and cfg.finetune is None and cfg.quantize == Quantize()


def test_without_quantize_no_epoch_is_quantization_aware():
    cfg = resolve_flags("--prune", "0.5")

    assert cfg.finetune.quant_aware_epochs == 0
    assert yaml.safe_load(dump_yaml(cfg))["finetune"]["quant_aware_epochs"] == 0  # explicit in config.yaml


def test_quant_aware_epochs_are_capped_at_half_the_recovery_epochs_and_advice_says_so():
    cfg = resolve_flags("--prune", "0.5", "--int8", "--finetune-epochs", "3")

    assert cfg.finetune.quant_aware_epochs == 1  # 4 requested by default; 3 // 2 = 1 leaves 2 float epochs
    (step, message), = advice(cfg)
    assert step == "finetune" and "only 1 of 3 recovery epochs is quantization-aware" in message
    assert advice(resolve_flags("--prune", "0.5", "--int8")) == []  # the default job: 4 of 12, nothing to say


def test_advice_on_an_unresolved_config_with_every_epoch_quantization_aware():
    cfg = RunConfig(prune=Prune(), quantize=Quantize(), finetune=Finetune(epochs=2, quant_aware_epochs=4))

    (step, message), = advice(cfg)

    assert step == "finetune" and "all 2 recovery epochs are quantization-aware" in message


def test_replaying_a_config_without_int8_with_int8_added_says_no_epoch_is_quantization_aware(tmp_path):
    f = tmp_path / "config.yaml"
    f.write_text(dump_yaml(resolve_flags("--prune", "0.5")))  # a run without --int8 saved quant_aware_epochs: 0

    cfg = resolve_flags("--config", str(f), "--int8")

    assert cfg.finetune.quant_aware_epochs == 0
    assert any("no recovery epoch is quantization-aware" in m for _, m in advice(cfg))


def test_advice_names_other_risky_settings(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("prune: {ratio: 0.5}\nfinetune: null\nedge_friendly: {}\n")

    notes = dict(advice(resolve(f)))

    assert "no recovery fine-tuning after pruning" in notes["finetune"]
    assert "without --int8" in notes["edge_friendly"]


@pytest.mark.parametrize("argv, message", [
    (["--calibration", "entropy"], "--calibration needs --int8"),
    (["--if-int8-slower", "fallback"], "--if-int8-slower needs --int8"),
    (["--remove-se"], "--remove-se is part of --edge-friendly: add --edge-friendly"),
    (["--importance", "taylor"], "--importance needs --prune"),
    (["--prune", "0", "--prune-steps", "3"], "--prune-steps needs --prune"),
    (["--finetune-epochs", "3"], "--finetune-epochs needs --prune or --edge-friendly"),
    (["--finetune-lr", "0.1", "--int8"], "--finetune-lr needs --prune or --edge-friendly"),
])
def test_an_option_of_a_stage_that_is_off_is_an_error(argv, message):
    with pytest.raises(CompressError) as e:
        resolve_flags(*argv)
    assert problems_of(e) == [message] or problems_of(e)[0].startswith(message)


def test_an_option_is_fine_when_the_yaml_turns_its_stage_on(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("quantize: {calibration_size: 64}\nedge_friendly: {}\n")

    cfg = resolve_flags("--config", str(f), "--calibration", "entropy", "--remove-se")

    assert cfg.quantize == Quantize(calibration="entropy", calibration_size=64)
    assert cfg.edge_friendly.remove_se and cfg.finetune is not None  # the swap needs recovery


# ------------------------------------------------------------------------------------------------ YAML and v1

def test_yaml_round_trip_replays_the_same_config(tmp_path):
    cfg = resolve(overrides={"model": "mobilenet_v2", "quantize": {}, "prune": {"ratio": 0.3, "importance": "taylor"},
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

    cfg = resolve_flags("--config", str(f), "--prune", "0.6", "--int8")

    assert cfg.model == "efficientnet_b0"  # from YAML
    assert cfg.prune.ratio == 0.6  # flag beats YAML
    assert cfg.prune.steps == 2  # YAML beats default, untouched by the flag
    assert cfg.train.epochs == 5
    assert cfg.quantize == Quantize()
    assert cfg.finetune == Finetune()  # default


V1 = """\
model: tiny_mobilenet_v3
data: digits
int8: {int8}
train: {{epochs: 3, batch_size: 64}}
prune: {{ratio: {ratio}, importance: l2, steps: 1, round_to: 8, taylor_batches: 8}}
edge_friendly: {{enabled: {ef}, activation: relu, remove_se: false}}
finetune: {{epochs: 4, lr: 0.2, batch_size: 256, schedule: onecycle, weight_decay: 5.0e-05, label_smoothing: 0.0,
           distill: true, temperature: 4.0, alpha: 0.7, quant_aware_epochs: 4}}
export: {{opset: 17, atol: 0.001, parity_images: 256}}
quantize: {{calibration: entropy, calibration_size: 2048, per_channel: true, activation_type: auto,
           kernel_rewrites: true, if_slower: warn, speed_check_runs: 200}}
"""


@pytest.mark.parametrize("int8, ratio, ef", [("false", "0.0", "false"), ("true", "0.5", "false"),
                                              ("true", "0.0", "true")])
def test_a_version_1_config_still_loads(tmp_path, int8, ratio, ef):
    f = tmp_path / "config.yaml"
    f.write_text(V1.format(int8=int8, ratio=ratio, ef=ef))

    cfg = resolve(f)

    assert (cfg.quantize is not None) == (int8 == "true")
    if cfg.quantize is not None:
        assert cfg.quantize.calibration == "entropy"
    assert (cfg.prune is not None) == (ratio != "0.0")
    assert cfg.prune is None or cfg.prune.allocation == "uniform"  # as that run pruned: replays stay replays
    assert (cfg.edge_friendly is not None) == (ef == "true")
    assert (cfg.finetune is not None) == (ratio != "0.0" or ef == "true")
    if cfg.finetune is not None:
        assert cfg.finetune.quant_aware_epochs == (2 if int8 == "true" else 0)
    replay = tmp_path / "replay.yaml"
    replay.write_text(dump_yaml(cfg))
    assert resolve(replay) == cfg and "int8" not in yaml.safe_load(replay.read_text())


def test_stage_sections_accept_true_and_null(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("prune: true\nquantize: true\nedge_friendly: null\n")

    cfg = resolve(f)

    assert cfg.prune == Prune() and cfg.quantize == Quantize() and cfg.edge_friendly is None


@pytest.mark.parametrize("text, message", [
    ("modle: mobilenet_v3\n", "bad.yaml: unknown key modle: valid keys are"),
    ("prune:\n  ratoi: 0.5\n", "unknown key prune.ratoi: valid keys in prune are"),
    ("prune:\n  ratio: half\n", "prune.ratio must be a number"),
    ("train:\n  epochs: 2.5\n", "train.epochs must be an integer"),
    ("int8: 'yes'\n", "int8 must be true or false"),
    ("edge_friendly: {enabled: 1}\n", "edge_friendly.enabled must be true or false"),
    ("- a\n- b\n", "must hold a mapping"),
    ("prune: 0.5\n", "prune must be a mapping of its settings, or null (off)"),
    ("train: {epochs: -1}\n", "bad.yaml: train.epochs: epochs must be 0 (use the weights as they are) or more, got -1"),
    ("measure: {min_runs: 0}\n", "bad.yaml: measure.min_runs: "),
    ("country: XYZ\n", "bad.yaml: country: country 'XYZ' is not an ISO 3166 alpha-3 code"),
])
def test_bad_yaml_names_the_file_and_the_key(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(CompressError) as e:
        resolve(f)
    assert any(message in p for p in problems_of(e)), problems_of(e)
    assert all(str(f) in p for p in problems_of(e)), problems_of(e)


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model: mobilenet_v3\ntrain:\n  epochs: [3\nprune: {ratio: 0.5}\n")

    with pytest.raises(CompressError) as e:
        resolve(f)

    (line,) = problems_of(e)
    assert line == (f"{f} is not valid YAML at line 4, column 6: expected ',' or ']', but got ':' (while parsing a "
                    "flow sequence that starts at line 3, column 11); fix the file there")


def test_every_problem_is_reported_at_once(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: {epochs: -1, lr: 0}\nmeasure: {min_runs: 0}\nprune: {ratio: 1.5, steps: 0}\n")

    with pytest.raises(CompressError) as e:
        resolve(f)

    keys = [p.split(": ")[1] for p in problems_of(e)]
    assert keys == ["train.epochs", "train.lr", "prune.ratio", "prune.steps", "measure.min_runs"]
    assert "\n" in str(e.value)  # library callers see every line too

    f.write_text("modle: x\nprune: {ratoi: 1}\ntrain: {epochs: many}\n")
    with pytest.raises(CompressError) as e:
        resolve(f)
    assert len(problems_of(e)) == 3


def test_flags_are_named_in_errors():
    with pytest.raises(CompressError) as e:
        resolve_flags("--epochs", "-1", "--country", "XYZ", "--power-watts", "-3", "--prune", "1")

    lines = problems_of(e)
    assert any(p.startswith("--epochs: epochs must be 0 (use the weights as they are) or more, got -1") for p in lines)
    assert any(p.startswith("--country: country 'XYZ'") and "compress list --countries" in p for p in lines)
    assert any(p.startswith("--power-watts: ") for p in lines)
    assert any(p.startswith("--prune: prune ratio must be in [0, 1)") for p in lines)


def test_country_is_checked_against_codecarbons_table():
    from compress.energy import countries

    table = countries()
    assert len(table) > 100 and table["FRA"] == "France"
    assert resolve(overrides={"country": "FRA"}).country == "FRA"
    with pytest.raises(CompressError, match="codes are upper case, like FRA"):
        resolve(overrides={"country": "fra"})


def test_validation_happens_before_any_work():
    with pytest.raises(CompressError, match=r"prune ratio must be in \[0, 1\)"):
        resolve(overrides={"prune": {"ratio": 1.0}})
    with pytest.raises(CompressError, match="unknown model 'resnet9000'.*mobilenet_v3_small"):
        resolve(overrides={"model": "resnet9000"})
    with pytest.raises(CompressError, match="epochs must be at least 1"):
        resolve(overrides={"prune": {"ratio": 0.5}, "finetune": {"epochs": 0}})


def test_differences_name_the_keys_that_changed():
    a = resolve(overrides={"prune": {"ratio": 0.5}})
    b = resolve(overrides={"prune": {"ratio": 0.3}, "quantize": {}})

    changed = {k: (x, y) for k, x, y in differences(a, b)}

    assert changed["prune.ratio"] == (0.5, 0.3)
    assert changed["quantize"][0] is None and "quantize.calibration" not in changed
