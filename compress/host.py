"""The machine compress runs on: CPU name, family and SIMD flags, read once from ``/proc/cpuinfo``.

Every figure compress reports is tied to a CPU, so every module that records or decides by the CPU
(the report's environment, the INT8 recipe, ``compress bench``, the benchmarks) asks this module.
The Pi runner (``edge_demo/pi/runner.py``) runs without compress installed and keeps its own copy of
:func:`cpu_name`; a test checks the two agree.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

# CPU part numbers (implementer 0x41, Arm) seen on Raspberry Pis and similar boards;
# /proc/cpuinfo on 64-bit Arm gives only the number.
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55",
             "0xd07": "Cortex-A57", "0xd08": "Cortex-A72", "0xd09": "Cortex-A73",
             "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1",
             "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78"}
# The SIMD features that decide which ONNX Runtime / PyTorch kernels run; the report records these.
SIMD_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
                        "asimd", "asimddp", "i8mm"})


@functools.lru_cache(maxsize=1)
def cpuinfo() -> dict[str, str]:
    """The first value of every ``key: value`` line of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


def cpu_flags() -> set[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``)."""
    info = cpuinfo()
    return set(info.get("flags", info.get("Features", "")).split())


def cpu_name() -> str:
    """The CPU model, e.g. 'AMD EPYC' or 'Cortex-A76 (Raspberry Pi 5 Model B Rev 1.0)'."""
    fields = cpuinfo()
    if fields.get("model name"):
        name = fields["model name"]
    elif fields.get("CPU implementer") == "0x41" and fields.get("CPU part") in ARM_PARTS:
        name = ARM_PARTS[fields["CPU part"]]
    else:
        name = platform.processor() or platform.machine() or "unknown"
    board = fields.get("Model")
    return f"{name} ({board})" if board else name


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def host_arch() -> str:
    """This machine's CPU family as the INT8 targets name it: ``x86_64`` or ``arm64`` (else what the OS says)."""
    machine = platform.machine().lower()
    return "x86_64" if is_x86() else "arm64" if machine in ("aarch64", "arm64") else machine


def has_vnni() -> bool:
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})


def cpu_record() -> dict:
    """What identifies the CPU in every report and benchmark: name, family/model, nominal MHz, SIMD flags."""
    info = cpuinfo()
    mhz = info.get("cpu MHz")
    return {
        "cpu": cpu_name(), "cpu_family": info.get("cpu family"), "cpu_model": info.get("model"),
        "cpu_mhz": float(mhz) if mhz else None, "cpu_flags": sorted(cpu_flags() & SIMD_FLAGS),
        "cores": os.cpu_count(), "machine": platform.machine(),
    }


def library_versions(packages: tuple[str, ...] = ("compress", "torch", "torchvision", "onnx", "onnxruntime",
                                                   "torch-pruning", "codecarbon", "numpy")) -> dict[str, str | None]:
    import importlib.metadata as md

    versions: dict[str, str | None] = {}
    for pkg in packages:
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return versions


def environment(device: str, threads: int) -> dict:
    """The run report's environment record."""
    return {**cpu_record(), "os": platform.platform(), "python": platform.python_version(), "train_device": device,
            "measure_device": "cpu", "measure_threads": threads, "versions": library_versions()}
