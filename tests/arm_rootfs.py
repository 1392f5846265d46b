"""An emulated 64-bit Arm Debian userland, to run the Raspberry Pi runner on an x86 machine.

Builds Debian bookworm arm64 (what 64-bit Raspberry Pi OS is based on) with debootstrap, adds
onnxruntime, numpy and Pillow aarch64 wheels from PyPI, and runs its python3.11 under
qemu-aarch64-static emulating a Cortex-A76 (the Raspberry Pi 5's CPU). No binfmt_misc, chroot or
docker: QEMU's -L prefix makes the guest see the userland's /usr and /lib, and the host for
every other path. Building needs root (debootstrap), qemu-user-static and debootstrap, and
network access to deb.debian.org and PyPI; about a minute.

The result is cached under ~/.cache/compress/arm-rootfs (or $COMPRESS_ARM_ROOT):
    bookworm-arm64/                         the Debian userland
    site-onnxruntime-X_numpy-Y_pillow-Z/    pip --target of the aarch64 wheels
Each is built in a temporary folder beside it and renamed into place when complete, so an
interrupted build never looks finished.

    python tests/arm_rootfs.py run -- edge_demo/pi/runner.py edge/ shoe.png
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"  # Raspberry Pi OS (64-bit) 12 is Debian bookworm; its python3 is 3.11
PYTHON_VERSION = "3.11"
MIRROR = "http://deb.debian.org/debian"
CPU = "cortex-a76"  # Raspberry Pi 5
QEMU = "qemu-aarch64-static"
# Wheel tags bookworm's glibc 2.36 accepts, newest first.
PLATFORMS = ["manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64",
             "manylinux2014_aarch64"]
INSTALL_HINT = ("run the install script (./install.sh), which installs them, or: "
                "sudo apt-get install -y qemu-user-static debootstrap")
# Without this file QEMU shows the guest the host's x86 /proc/cpuinfo, and onnxruntime's CPU
# detection aborts on import. It is what a Raspberry Pi 5 reports, plus a model name that
# says the CPU is emulated (the runner's bench shows it).
CPUINFO = "".join(
    f"processor\t: {i}\n"
    "model name\t: Cortex-A76 (emulated by QEMU)\n"
    "BogoMIPS\t: 108.00\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
    "asimdrdm lrcpc dcpop asimddp\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\n"
    "CPU part\t: 0xd0b\nCPU revision\t: 1\n\n"
    for i in range(4)
)


class ArmRootfsError(Exception):
    """The emulated userland cannot be built or run; the message says what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("COMPRESS_ARM_ROOT") or
                Path.home() / ".cache" / "compress" / "arm-rootfs")


@dataclass(frozen=True)
class ArmPython:
    """python3.11 of the emulated userland, with the aarch64 wheels on its path."""

    root: Path
    site: Path

    def command(self, args: list[str]) -> list[str]:
        python = self.root / "usr" / "bin" / f"python{PYTHON_VERSION}"
        return [_which(QEMU), "-cpu", CPU, "-L", str(self.root), str(python), *args]

    def env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
                "HOME": os.environ.get("HOME", "/root"), "PYTHONPATH": str(self.site),
                "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}

    def run(self, args: list[str], *, timeout: float = 900,
            **kwargs) -> subprocess.CompletedProcess:
        """Run python3.11 under QEMU with args; output captured as text."""
        return subprocess.run(self.command(args), env=self.env(), capture_output=True,
                              text=True, timeout=timeout, **kwargs)


def _which(tool: str) -> str:
    # debootstrap lives in /usr/sbin, which is not on every user's PATH.
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if not found:
        raise ArmRootfsError(f"{tool} is not installed: the ARM check needs qemu-user-static "
                             f"and debootstrap; {INSTALL_HINT}")
    return found


def _run(cmd: list[str], what: str, **kwargs) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise ArmRootfsError(f"{what} failed (exit {result.returncode}):\n{tail}")


def _build_atomically(final: Path, build, log) -> Path:
    """Call build(tmp) in a temporary folder beside final, then rename it into place."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".build-{final.name}-*"):
        if time.time() - stale.stat().st_mtime > 3600:  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=final.parent))
    start = time.monotonic()
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp made it private
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():  # else another process finished the same build first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"built {final} in {time.monotonic() - start:.0f} s")
    return final


def _build_userland(tmp: Path) -> None:
    if os.geteuid() != 0:
        raise ArmRootfsError("building the ARM userland needs root (debootstrap); run the "
                             "tests as root once, or point COMPRESS_ARM_ROOT at a built one")
    _run([_which("debootstrap"), "--arch=arm64", "--foreign", "--variant=minbase",
          "--include=python3", SUITE, str(tmp), MIRROR], "debootstrap")
    # --foreign unpacked only the essential packages; unpack the rest (python3 and its
    # libraries) the way the second stage would, minus maintainer scripts we cannot run.
    debpaths = dict(line.split(" ", 1) for line in
                    (tmp / "debootstrap" / "debpaths").read_text().splitlines() if " " in line)
    for package in (tmp / "debootstrap" / "base").read_text().split():
        deb = tmp / debpaths[package].lstrip("/")
        dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                                stdout=subprocess.PIPE)
        _run(["tar", "-C", str(tmp), "--keep-directory-symlink", "-xf", "-"],
             f"unpacking {deb.name}", stdin=dpkg.stdout)
        dpkg.stdout.close()
        if dpkg.wait() != 0:
            raise ArmRootfsError(f"dpkg-deb could not read {deb}")
    for deb in (tmp / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        deb.unlink()  # 40 MB we do not need again
    proc = tmp / "proc"
    if proc.is_symlink() or proc.is_file():
        proc.unlink()  # debootstrap links it to the host's /proc
    proc.mkdir(exist_ok=True)
    (proc / "cpuinfo").write_text(CPUINFO)
    probe = ArmPython(root=tmp, site=tmp).run(["-c", "import platform; print(platform.machine())"],
                                             timeout=120)
    if probe.returncode != 0 or probe.stdout.strip() != "aarch64":
        raise ArmRootfsError(f"the emulated python3 does not start:\n{probe.stderr[-2000:]}")


def _install_wheels(tmp: Path, pins: dict[str, str]) -> None:
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          "--no-input", "--target", str(tmp), "--only-binary=:all:", *platforms,
          "--python-version", PYTHON_VERSION, "--implementation", "cp",
          *[f"{name}=={version}" for name, version in pins.items()]],
         "pip install of the aarch64 wheels " + " ".join(f"{n}=={v}" for n, v in pins.items()))


def ensure_arm_python(pins: dict[str, str], *, cache: Path | None = None,
                      log=print) -> ArmPython:
    """Build (or reuse) the userland and a wheel folder holding exactly these versions.

    Example:
        arm = ensure_arm_python({"onnxruntime": "1.32.0", "numpy": "2.4.6", "pillow": "13.0.0"})
        arm.run(["edge_demo/pi/runner.py", "edge/", "shoe.png"])
    """
    _which(QEMU)
    cache = cache or cache_dir()
    root = _build_atomically(cache / f"{SUITE}-arm64", _build_userland, log)
    name = "site-" + "_".join(f"{n}-{v}" for n, v in sorted(pins.items()))
    site = _build_atomically(cache / name, lambda tmp: _install_wheels(tmp, pins), log)
    return ArmPython(root=root, site=site)


def host_pins() -> dict[str, str]:
    """The host's onnxruntime, numpy and Pillow versions, so both sides run the same code."""
    import numpy
    import onnxruntime
    import PIL
    return {"onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__,
            "pillow": PIL.__version__}


def main(argv: list[str]) -> int:
    if len(argv) < 1 or argv[0] not in ("build", "run"):
        print("usage: arm_rootfs.py build | run -- SCRIPT [ARGS...]", file=sys.stderr)
        return 2
    try:
        arm = ensure_arm_python(host_pins(), log=lambda m: print(m, file=sys.stderr))
    except ArmRootfsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if argv[0] == "build":
        print(arm.root)
        return 0
    args = argv[2:] if argv[1:2] == ["--"] else argv[1:]
    return subprocess.run(arm.command(args), env=arm.env()).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
