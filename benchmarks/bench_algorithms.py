"""Every registered algorithm on ColoredMNIST-IRM with its default hyperparameters (the IRM MLP), in one process.

For each data source (the embedded 5,000 digits, and the full MNIST when --data-dir has it) one
`fishr_tune.training.Trainer` per algorithm trains for `--steps` steps, evaluating at every `--checkpoint-freq`.
The trainers advance round-robin, `--chunk` steps at a time, in an order that rotates every round, so load from
other jobs on a shared machine falls on every algorithm alike; each trainer's global RNG state is saved and
restored around its chunks, so each run is the one `fishr-tune train` would produce alone (same seed, same draws).

Reported per algorithm: training-domain validation accuracy (mean out-split accuracy of the training
environments, DomainBed's `val_acc`) and the test environment's in-split accuracy (`env2_in_acc`) at the last
step, and the median time of one training step (minibatch sampling + update, no evaluation) relative to ERM's.

    .venv/bin/python benchmarks/bench_algorithms.py [--steps 1000] [--checkpoint-freq 500] [--chunk 50]
        [--data-dir /work/shared/data] [--sources embedded,full] [--algorithms ERM,Fish,...] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from fishr_tune.algorithms import ALGORITHMS
from fishr_tune.data import get_dataset
from fishr_tune.records import acc_key
from fishr_tune.training import Trainer, TrainConfig, _rng_state, _set_rng_state

DATASET = "ColoredMNIST-IRM"
TEST_ENV = 2


@dataclass
class Run:
    """One algorithm's trainer, its private global-RNG state, its step times and its latest record."""

    algorithm: str
    trainer: Trainer
    rng: dict[str, Any]
    step_times: list[float] = field(default_factory=list)
    record: dict[str, Any] | None = None

    def advance(self, n_steps: int) -> None:
        _set_rng_state(self.rng)
        for _ in range(min(n_steps, self.trainer.steps - self.trainer.step)):
            start = time.perf_counter()
            self.trainer.train_step()
            self.step_times.append(time.perf_counter() - start)
            if self.trainer.is_checkpoint_step(self.trainer.step - 1):
                self.record = self.trainer.make_record()
        self.rng = _rng_state()


def benchmark_source(source: str, data_dir: str | None, algorithms: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    dataset = get_dataset(DATASET, data_dir=data_dir)
    runs = []
    for name in algorithms:
        config = TrainConfig(
            dataset=DATASET, algorithm=name, test_envs=[TEST_ENV], steps=args.steps,
            checkpoint_freq=args.checkpoint_freq, data_dir=data_dir, device="cpu",
        )
        trainer = Trainer(config, dataset=dataset)  # seeds the global RNGs, then builds the algorithm
        runs.append(Run(name, trainer, _rng_state()))
    round_index = 0
    start = time.perf_counter()
    while any(not run.trainer.finished for run in runs):
        shift = round_index % len(runs)
        for run in runs[shift:] + runs[:shift]:
            run.advance(args.chunk)
        round_index += 1
    wall = time.perf_counter() - start
    erm_median = statistics.median(next(r for r in runs if r.algorithm == "ERM").step_times)
    rows = []
    for run in runs:
        assert run.record is not None
        median = statistics.median(run.step_times)
        rows.append({
            "source": source,
            "data": dataset.source,
            "algorithm": run.algorithm,
            "steps": run.trainer.steps,
            "train_out_acc": run.record["val_acc"],
            "test_in_acc": run.record[acc_key(TEST_ENV, "in")],
            "step_time_ms": 1000 * median,
            "relative_step_time": median / erm_median,
            "final_loss": run.record.get("loss"),
        })
    print(f"# {source}: {dataset.source}; {args.steps} steps, wall {wall:.0f} s for all algorithms")
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    sources = list(dict.fromkeys(r["source"] for r in rows))
    header = "| algorithm | " + " | ".join(f"{s}: train (out) | {s}: test (env2 in) | {s}: step time / ERM" for s in sources) + " |"
    lines = [header, "|" + "---|" * (1 + 3 * len(sources))]
    for name in dict.fromkeys(r["algorithm"] for r in rows):
        cells = []
        for source in sources:
            row = next((r for r in rows if r["algorithm"] == name and r["source"] == source), None)
            if row is None:
                cells += ["", "", ""]
            else:
                cells += [f"{row['train_out_acc']:.3f}", f"{row['test_in_acc']:.3f}", f"{row['relative_step_time']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--checkpoint-freq", type=int, default=500)
    parser.add_argument("--chunk", type=int, default=50, help="steps per algorithm per round-robin turn")
    parser.add_argument("--data-dir", default="/work/shared/data", help="MNIST/raw for the 'full' source")
    parser.add_argument("--sources", default="embedded,full", help="embedded and/or full")
    parser.add_argument("--algorithms", default=None, help="comma-separated (default: every registered one)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable on a shared machine)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    algorithms = args.algorithms.split(",") if args.algorithms else sorted(ALGORITHMS)
    if "ERM" not in algorithms:
        algorithms.insert(0, "ERM")  # the time reference
    algorithms = ["ERM"] + [a for a in algorithms if a != "ERM"]
    rows: list[dict[str, Any]] = []
    for source in args.sources.split(","):
        if source not in ("embedded", "full"):
            parser.error(f"--sources: unknown source {source!r}; valid: embedded, full")
        rows += benchmark_source(source, None if source == "embedded" else args.data_dir, algorithms, args)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); algorithms: {', '.join(algorithms)}")
    print(markdown(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
