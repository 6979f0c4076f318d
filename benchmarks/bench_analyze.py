"""How long `fishr-tune analyze` takes on a large sweep: gather (parquet) + selection table + the three
selection methods + summaries, over generated records (default 10,000 runs x 50 checkpoints); then the real
command `fishr-tune analyze --records X.parquet --format json` end to end in a subprocess (interpreter start,
imports, reading, selection, JSON output), whose JSON must equal the library's.

The runs are DomainBed-shaped: 3 environments, test envs {0}, {1}, {2} and the pairs (for leave-one-out),
2 algorithms, 3 trial seeds, every configuration (hparams_seed) run in every group; --stopped-share of the
runs stop early at a random checkpoint.

    .venv/bin/python benchmarks/bench_analyze.py [--runs 10000] [--checkpoints 50] [--stopped-share 0.0] [--no-command]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fishr_tune.analysis.readers import gather_files
from fishr_tune.analysis.render import results_json
from fishr_tune.analysis.table import export_parquet, selection_table, selections, summaries_of

TEST_ENVS = [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]
ALGORITHMS = ["ERM", "Fishr"]
TRIAL_SEEDS = [0, 1, 2]


def generate(runs: int, checkpoints: int, stopped_share: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    groups = len(TEST_ENVS) * len(ALGORITHMS) * len(TRIAL_SEEDS)
    configs = -(-runs // groups)
    run_index = np.arange(runs)
    config = run_index // groups
    rest = run_index % groups
    algorithm = rest // (len(TEST_ENVS) * len(TRIAL_SEEDS))
    test_envs = (rest // len(TRIAL_SEEDS)) % len(TEST_ENVS)
    trial_seed = rest % len(TRIAL_SEEDS)
    steps = 100 * checkpoints
    n_runs = len(run_index)
    per_run = pd.DataFrame({
        "run": [f"run{i:06d}" for i in run_index],
        "args.dataset": "ColoredMNIST-IRM",
        "args.algorithm": np.array(ALGORITHMS)[algorithm],
        "args.test_envs": [list(TEST_ENVS[t]) for t in test_envs],
        "args.trial_seed": trial_seed,
        "args.steps": steps,
        "hparams.lr": 10.0 ** rng.uniform(-4.5, -2.5, configs)[config],
        "hparams.batch_size": (2 ** rng.integers(3, 9, configs))[config],
        "hparams.lambda": np.where(algorithm == 1, 10.0 ** rng.uniform(1, 4, configs)[config], np.nan),
        "hparams.featurizer": "mlp",
    })
    # ASHA-like: a share of the runs stopped after a random number of checkpoints
    reached = np.where(rng.random(n_runs) < stopped_share, rng.integers(1, checkpoints, n_runs), checkpoints)
    repeat = np.repeat(np.arange(n_runs), reached)
    table = per_run.iloc[repeat].reset_index(drop=True)
    starts = np.repeat(np.cumsum(reached) - reached, reached)
    position = np.arange(len(table)) - starts
    table["step"] = np.where(position == checkpoints - 1, steps - 1, position * 100)
    for env in range(3):
        for split in ("in", "out"):
            table[f"env{env}_{split}_acc"] = rng.random(len(table))
    table["val_acc"] = rng.random(len(table))
    table["loss"] = rng.random(len(table))
    return table


def time_command(path: Path) -> tuple[float, dict]:
    """Wall time and parsed output of `fishr-tune analyze --records path --format json` as a user runs it."""
    script = Path(sys.executable).parent / "fishr-tune"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "fishr_tune.cli"]
    start = time.perf_counter()
    done = subprocess.run([*command, "analyze", "--records", str(path), "--format", "json"],
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"fishr-tune analyze exited {done.returncode}: {done.stderr.strip()}")
    return seconds, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--checkpoints", type=int, default=50)
    parser.add_argument("--stopped-share", type=float, default=0.0, help="share of runs stopped early (ASHA-like)")
    parser.add_argument("--no-command", dest="command", action="store_false",
                        help="time the library calls only, not the `fishr-tune analyze` subprocess")
    args = parser.parse_args()
    table = generate(args.runs, args.checkpoints, args.stopped_share)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "records.parquet"
        export_parquet(table, path)
        print(f"{table['run'].nunique():,} runs, {len(table):,} records, parquet {path.stat().st_size / 1e6:.1f} MB")
        timings = {}
        start = time.perf_counter()
        gathered = gather_files(path)
        timings["gather (parquet)"] = time.perf_counter() - start
        mark = time.perf_counter()
        prepared = selection_table(gathered)
        timings["selection table"] = time.perf_counter() - mark
        selected = {}
        for method in ("training_domain", "leave_one_out", "oracle"):
            mark = time.perf_counter()
            selected.update(selections(prepared, [method]))
            timings[method] = time.perf_counter() - mark
        mark = time.perf_counter()
        summaries = summaries_of(selected)
        timings["summaries"] = time.perf_counter() - mark
        total = time.perf_counter() - start
        if args.command:
            command_seconds, output = time_command(path)
            same = output == results_json(summaries)
    print("library calls:")
    for name, seconds in timings.items():
        print(f"  {name:<18} {seconds:6.2f} s")
    print(f"  {'total':<18} {total:6.2f} s")
    if args.command:
        print(f"command `fishr-tune analyze --records X.parquet --format json`: {command_seconds:6.2f} s end to end "
              f"(output {'equals' if same else 'DIFFERS FROM'} the library's)")
    print("groups selected: " + ", ".join(f"{m} {len(f)}" for m, f in selected.items()))
    print("summary rows: " + ", ".join(f"{m} {len(s)}" for m, s in summaries.items()))


if __name__ == "__main__":
    main()
