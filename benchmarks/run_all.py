"""Run every benchmark, one after another, each in its own process; results land in benchmarks/results/.

    python -m benchmarks.run_all            # ~25 min on 2 cores with the default baseline cached (+~12 min if not)
    python -m benchmarks.run_all --quick    # 3–5 min on 2 cores: every script, small settings
    python -m benchmarks.run_all --main-run runs/my-run   # reuse a finished default-job run for accuracy
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import RESULTS, ROOT


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small settings for every script (3–5 min on 2 cores)")
    p.add_argument("--main-run", type=Path, help="a finished default-job run folder for accuracy (skips training)")
    p.add_argument("--finetune-epochs", type=int, help="sweep's recovery epochs per prune ratio (default 6)")
    p.add_argument("--sweep-config", type=Path, help="a sweep grid YAML for the sweep instead of the default job's")
    p.add_argument("--out", type=Path, default=RESULTS, help="where results go (default benchmarks/results)")
    a = p.parse_args(argv)
    common = [*(["--quick"] if a.quick else []), "--out", str(a.out.resolve())]
    jobs = [
        ["compare_recipes", *common],
        ["accuracy", *common, *([str(a.main_run.resolve())] if a.main_run else [])],
        ["sweep", *common, *(["--finetune-epochs", str(a.finetune_epochs)] if a.finetune_epochs else []),
         *(["--config", str(a.sweep_config.resolve())] if a.sweep_config else [])],
        ["input_size", *common, *(["--run", str(a.main_run.resolve())] if a.main_run else [])],
        ["train_step", *common],
    ]
    start, failed = time.perf_counter(), []
    for job in jobs:
        t = time.perf_counter()
        print(f"\n=== python -m benchmarks.{' '.join(job)}", flush=True)
        rc = subprocess.call([sys.executable, "-m", f"benchmarks.{job[0]}", *job[1:]], cwd=ROOT)
        print(f"=== {job[0]}: exit {rc} after {time.perf_counter() - t:.0f} s", flush=True)
        if rc:
            failed.append(job[0])
    print(f"\nall done in {time.perf_counter() - start:.0f} s; results in {a.out}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
