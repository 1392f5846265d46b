"""Energy and CO2, labelled by how each figure was obtained.

Three meters, in order of preference:

* ``user-power``: a power figure the user measured (``--power-watts``, e.g. a USB meter on a
  Raspberry Pi): energy = watts × wall time.
* ``rapl``: the CPU's RAPL energy counters in ``/sys/class/powercap``, read directly. They count
  the whole CPU package, not only this process.
* ``codecarbon-estimate``: codecarbon's model when there are no counters: CPU power = the CPU's TDP
  × this process's CPU load, plus a constant RAM power. An estimate derived from time like this
  mostly mirrors latency; the label says so.

CO2 always uses codecarbon's carbon intensity for the configured country
(``OfflineEmissionsTracker(country_iso_code=...)``): nothing geolocates over the network.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from compress.errors import CompressError

POWERCAP = Path("/sys/class/powercap")


@dataclass
class Reading:
    """Energy and CO2 of one tracked piece of work; filled in when its ``with`` block ends."""

    seconds: float = 0.0
    energy_j: float | None = None
    co2_g: float | None = None
    method: str = "n/a"


def countries() -> dict[str, str]:
    """codecarbon's carbon-intensity table: ISO 3166 alpha-3 code → country name (empty if it cannot be read).

    Read from codecarbon's package data without importing codecarbon (which imports pandas), so a bad
    ``--country`` is refused before any work starts. A code outside this table would make codecarbon fall
    back to the world average without saying so.
    """
    import importlib.util
    import json

    spec = importlib.util.find_spec("codecarbon")
    if spec is None or spec.origin is None:
        return {}
    table = Path(spec.origin).parent / "data" / "private_infra" / "global_energy_mix.json"
    try:
        data = json.loads(table.read_text())
    except (OSError, ValueError):
        return {}
    return {code: str(row.get("country_name", code)) for code, row in data.items()
            if isinstance(row, dict) and row.get("carbon_intensity") is not None}


def country_problem(country: str) -> str | None:
    """Why ``country`` cannot be used for the carbon intensity, or None when codecarbon knows it."""
    known = countries()
    if country in known or (not known and len(country) == 3 and country.isalpha() and country.isupper()):
        return None
    hint = f": codes are upper case, like {country.upper()}" if country.upper() in known else ""
    return (f"country {country!r} is not an ISO 3166 alpha-3 code in codecarbon's carbon-intensity table{hint} "
            f"(such as USA, FRA or DEU; `compress list --countries` shows all {len(known) or 'of them'})")


def rapl_domains() -> list[Path]:
    """Readable top-level RAPL package counters (``intel-rapl:N/energy_uj``; AMD exposes the same)."""
    if not POWERCAP.is_dir():
        return []
    out = []
    for d in sorted(POWERCAP.glob("intel-rapl:*")):
        f = d / "energy_uj"
        if d.name.count(":") == 1 and f.exists():
            try:
                int(f.read_text())
                out.append(f)
            except (OSError, ValueError):
                pass
    return out


def _read_rapl(files: list[Path]) -> list[int]:
    return [int(f.read_text()) for f in files]


class EnergyMeter:
    """One codecarbon tracker for a whole run, with a task per piece of work.

    >>> with EnergyMeter(country="USA") as meter:  # doctest: +SKIP
    ...     with meter.track("finetune") as r:
    ...         train()
    ...     r.energy_j, r.co2_g, r.method
    """

    def __init__(self, *, country: str = "USA", power_watts: float | None = None, log_file: Path | None = None):
        if power_watts is not None and not power_watts > 0:
            raise CompressError(f"--power-watts must be positive, got {power_watts}")
        self.country = country
        self.power_watts = power_watts
        self.log_file = log_file
        self.rapl = rapl_domains() if power_watts is None else []
        self._tracker = None
        self._cpu_desc = ""

    def __enter__(self) -> "EnergyMeter":
        import contextlib
        import io
        import warnings

        from codecarbon import OfflineEmissionsTracker

        logger = logging.getLogger("codecarbon")
        logger.handlers = []  # its import-time handler writes to the real stdout, past any redirection
        captured = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            warnings.simplefilter("ignore")
            try:
                self._tracker = OfflineEmissionsTracker(
                    country_iso_code=self.country, save_to_file=False, log_level="warning", measure_power_secs=1,
                    tracking_mode="process", allow_multiple_runs=True,
                )
                self._tracker.start()
            except Exception as e:  # codecarbon validates the country lazily and raises various types
                raise CompressError(f"codecarbon cannot track emissions for country {self.country!r} "
                                    f"({type(e).__name__}): use an ISO 3166 alpha-3 code such as USA, FRA, DEU") from None
        # codecarbon installs a stream handler of its own; its messages belong in the run log, not the terminal.
        # A NullHandler keeps logging's last-resort stderr handler away when nothing propagates (for example the
        # scheduler's "didn't run for a long period" warning on a loaded machine).
        logger.handlers = [logging.NullHandler()]
        logger.propagate = self.log_file is not None
        if self.log_file is not None and captured.getvalue():
            with open(self.log_file, "a") as f:
                f.write(captured.getvalue())
        cpu = next((h for h in getattr(self._tracker, "_hardware", []) if type(h).__name__ == "CPU"), None)
        if cpu is not None:
            generic = " (generic default, CPU not in codecarbon's table)" if getattr(cpu, "_is_generic_tdp", False) else ""
            self._cpu_desc = f"TDP {getattr(cpu, '_tdp', '?')} W{generic}"
        return self

    def __exit__(self, *exc) -> None:
        if self._tracker is not None:
            try:
                self._tracker.stop()
            except Exception:  # stopping must never mask the run's own error
                pass
            self._tracker = None

    @property
    def method(self) -> str:
        if self.power_watts is not None:
            return f"user-power: {self.power_watts:g} W × wall time"
        if self.rapl:
            return "rapl: CPU package energy counters (whole package, measured)"
        return (f"codecarbon-estimate: CPU {self._cpu_desc} × process CPU load + constant RAM power "
                "(no RAPL counters on this machine; estimated from time, not measured)")

    @contextmanager
    def track(self, task: str) -> Iterator[Reading]:
        reading = Reading(method=self.method)
        if self._tracker is None:
            raise RuntimeError("EnergyMeter.track used outside its with block")
        rapl0 = _read_rapl(self.rapl) if self.rapl else None
        self._tracker.start_task(task)
        t0 = time.perf_counter()
        try:
            yield reading
        finally:
            reading.seconds = time.perf_counter() - t0
            data = self._tracker.stop_task()
            cc_kwh = float(getattr(data, "energy_consumed", 0.0) or 0.0)
            cc_kg = float(getattr(data, "emissions", 0.0) or 0.0)
            intensity_g_per_j = (cc_kg * 1000.0 / (cc_kwh * 3.6e6)) if cc_kwh > 0 else None
            if self.power_watts is not None:
                energy = self.power_watts * reading.seconds
            elif rapl0 is not None:
                # Counters wrap around; a wrapped domain reads smaller, so skip it rather than go negative.
                energy = sum(max(0, b - a) for a, b in zip(rapl0, _read_rapl(self.rapl))) / 1e6
            else:
                energy = cc_kwh * 3.6e6 if cc_kwh > 0 else None
            reading.energy_j = energy
            reading.co2_g = energy * intensity_g_per_j if (energy is not None and intensity_g_per_j) else None
