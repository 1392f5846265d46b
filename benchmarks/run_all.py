"""Run every benchmark, one after another, each in its own process; results land in benchmarks/results/.

    python benchmarks/run_all.py            # ~25 min on 2 cores with the default job's baseline cached (+~12 min if not)
    python benchmarks/run_all.py --quick    # ~3 min: every script, small settings
    python benchmarks/run_all.py --main-run runs/my-run   # reuse a finished default-job run for accuracy.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small settings for every script (~3 min)")
    p.add_argument("--main-run", type=Path, help="a finished default-job run folder for accuracy.py (skips training)")
    p.add_argument("--finetune-epochs", type=int, help="sweep.py's recovery epochs per prune ratio (default 6)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where results go (default benchmarks/results)")
    a = p.parse_args(argv)
    common = [*(["--quick"] if a.quick else []), "--out", str(a.out)]
    jobs = [
        ["compare_recipes.py", *common],
        ["accuracy.py", *common, *([str(a.main_run)] if a.main_run else [])],
        ["sweep.py", *common, *(["--finetune-epochs", str(a.finetune_epochs)] if a.finetune_epochs else [])],
    ]
    start, failed = time.perf_counter(), []
    for job in jobs:
        t = time.perf_counter()
        print(f"\n=== {' '.join(job)}", flush=True)
        rc = subprocess.call([sys.executable, str(HERE / job[0]), *job[1:]])
        print(f"=== {job[0]}: exit {rc} after {time.perf_counter() - t:.0f} s", flush=True)
        if rc:
            failed.append(job[0])
    print(f"\nall done in {time.perf_counter() - start:.0f} s; results in {a.out}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
