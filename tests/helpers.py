"""Small builders shared by tests: a real Context over real data, with a quick measurement config."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from compress.data import load_dataset
from compress.energy import EnergyMeter
from compress.measure import MeasureConfig
from compress.pipeline import Context

QUICK = MeasureConfig(warmup_runs=3, min_runs=30, min_seconds=0.05, throughput_seconds=0.05)
_DATA: dict = {}


def fmnist_subset(limit_train: int = 1500, limit_test: int = 300):
    key = ("fashion-mnist", limit_train, limit_test)
    if key not in _DATA:
        _DATA[key] = load_dataset("fashion-mnist", input_size=32, limit_train=limit_train, limit_test=limit_test)
    return _DATA[key]


@contextmanager
def context(run_dir: Path, data=None, teacher=None, measure: MeasureConfig = QUICK) -> Iterator[Context]:
    with EnergyMeter(country="USA") as meter:
        yield Context(data=data or fmnist_subset(), run_dir=run_dir, seed=0, device="cpu", measure=measure,
                      meter=meter, teacher=teacher)
