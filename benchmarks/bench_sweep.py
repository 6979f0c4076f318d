"""Sweep benchmarks on a local Ray (default 2 CPUs).

1. Overhead: 16 short trials (1 CPU each): sweep wall time against (sum of the trials' compute time) / CPUs.
   Target: at most 25% overhead.
2. Early stopping: ASHA against no early stopping on the same 32 configurations (Optuna's RandomSampler with one
   seed draws the same configurations whatever the results): optimizer steps trained and best validation accuracy.
   Target: at most 1/3 of the steps for a best accuracy within 1 point.

    .venv/bin/python benchmarks/bench_sweep.py [--cpus 2] [--overhead-steps 400] [--asha-steps 600] [--json out.json]

HOME and RAY_TMPDIR are pointed at a scratch directory (ray.init writes ~/.ray/auth_token).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BASE: dict[str, Any] = {
    "dataset": "ColoredMNIST-IRM",
    "algorithms": ["ERM"],
    "test_envs": [2],
    "trial_seeds": [0],
    "hyperparameters": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}, "batch_size": {"choice": [32, 64, 128]}},
    "resources": {"cpu": 1},
    "max_failures": 0,
}


def make_spec(storage: Path, **values: Any):
    from fishr_tune.sweep.spec import build_spec

    return build_spec({**BASE, **values, "storage_path": str(storage)}, "bench_sweep.py")


def overhead(storage: Path, cpus: int, steps: int, trials: int) -> dict[str, Any]:
    from fishr_tune.sweep.runner import run_sweep

    spec = make_spec(storage, name="overhead", steps=steps, checkpoint_freq=max(steps // 4, 1),
                     search={"algorithm": "random", "num_samples": trials, "seed": 0}, scheduler="none")
    with open(os.devnull, "w") as quiet:
        summary = run_sweep(spec, stream=quiet)
    ideal = summary.trial_compute_s / cpus
    return {
        "trials": summary.trials,
        "steps_per_trial": steps,
        "wall_s": round(summary.wall_time_s, 1),
        "sum_trial_compute_s": round(summary.trial_compute_s, 1),
        "ideal_wall_s": round(ideal, 1),
        "overhead": round(summary.wall_time_s / ideal - 1.0, 3),
    }


def early_stopping(storage: Path, steps: int, samples: int, grace: int, reduction: float) -> dict[str, Any]:
    from fishr_tune.sweep.runner import run_sweep

    results = {}
    for scheduler in ("none", "asha"):
        spec = make_spec(
            storage, name=f"stopping_{scheduler}", steps=steps, checkpoint_freq=grace,
            search={"algorithm": "random", "num_samples": samples, "seed": 0},
            scheduler={"type": scheduler, "grace_period": grace, "reduction_factor": reduction},
        )
        with open(os.devnull, "w") as quiet:
            summary = run_sweep(spec, stream=quiet)
        (group,) = summary.groups.values()
        results[scheduler] = {
            "steps_trained": summary.steps_trained,
            "best_val_acc": group.best_val_acc,
            "best_hparams": group.best_hparams,
            "stopped_early": summary.stopped_early,
            "wall_s": round(summary.wall_time_s, 1),
        }
    full, asha = results["none"], results["asha"]
    return {
        "configurations": samples,
        "steps_per_trial": steps,
        "grace_period": grace,
        "reduction_factor": reduction,
        **{f"{k}_{name}": v for name, r in results.items() for k, v in r.items() if k != "best_hparams"},
        "step_ratio": round(asha["steps_trained"] / full["steps_trained"], 3),
        "best_val_acc_gap_points": round(100 * (full["best_val_acc"] - asha["best_val_acc"]), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--overhead-trials", type=int, default=16)
    parser.add_argument("--overhead-steps", type=int, default=400)
    parser.add_argument("--asha-samples", type=int, default=32)
    parser.add_argument("--asha-steps", type=int, default=600)
    parser.add_argument("--grace", type=int, default=50)
    parser.add_argument("--reduction", type=float, default=4.0)
    parser.add_argument("--skip", choices=["overhead", "asha"], action="append", default=[])
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bsw", dir="/tmp"))
    for sub in ("home", "ray", "sweeps"):
        (scratch / sub).mkdir()
    os.environ.update(HOME=str(scratch / "home"), RAY_TMPDIR=str(scratch / "ray"))
    import ray

    try:
        started = time.monotonic()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        report: dict[str, Any] = {"cpus": args.cpus, "ray_init_s": round(time.monotonic() - started, 1),
                                  "load_average_at_start": os.getloadavg()}
        if "overhead" not in args.skip:
            report["overhead"] = overhead(scratch / "sweeps", args.cpus, args.overhead_steps, args.overhead_trials)
            print(json.dumps({"overhead": report["overhead"]}), flush=True)
        if "asha" not in args.skip:
            report["early_stopping"] = early_stopping(scratch / "sweeps", args.asha_steps, args.asha_samples,
                                                      args.grace, args.reduction)
        report["load_average_at_end"] = os.getloadavg()
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
