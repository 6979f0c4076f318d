"""A full Fishr training step against an ERM step: DomainBed's MNIST_CNN on ColoredMNIST, 2 domains x 64.

Every model starts from the same initialisation and sees the same minibatches. Per round, one step of each model
is timed, in an order that rotates from round to round (so load from other jobs on a shared machine falls on
all of them alike); the first `--warmup` rounds are not counted. Reported: the median wall-clock step time and
the median CPU time of this process per step (less sensitive to other jobs stealing the cores), each with its
ratio to ERM's, for Fishr before its anneal step (penalty computed and its moving average updated, weight 0)
and after it (nll + lambda * penalty backpropagated), with the default closed-form engine and with BackPACK.

    .venv/bin/python benchmarks/bench_fishr_step.py [--steps 30] [--warmup 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from fishr_tune.algorithms import Algorithm, get_algorithm_class
from fishr_tune.data import get_dataset
from fishr_tune.hparams import apply_overrides, default_hparams

DATASET = "ColoredMNIST"
TRAIN_ENVS = (0, 1)
BATCH = 64


def build(algorithm: str, overrides: dict) -> Algorithm:
    hparams = apply_overrides(algorithm, DATASET, default_hparams(algorithm, DATASET), overrides)
    torch.manual_seed(0)
    return get_algorithm_class(algorithm)((2, 28, 28), 2, len(TRAIN_ENVS), hparams)


def make_batches(n: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    dataset = get_dataset(DATASET)
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        step = []
        for i in TRAIN_ENVS:
            env = dataset.environments[i]
            idx = torch.randint(len(env), (BATCH,), generator=generator)
            step.append((env.x[idx], env.y[idx]))
        out.append(step)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model (at least 30 for the report)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    never = 10**9
    models: dict[str, Algorithm] = {
        "ERM": build("ERM", {}),
        "Fishr closed_form, before anneal": build("Fishr", {"penalty_anneal_iters": never}),
        "Fishr closed_form, after anneal": build("Fishr", {"penalty_anneal_iters": 0}),
        "Fishr backpack, before anneal": build("Fishr", {"penalty_anneal_iters": never, "gradvar_engine": "backpack"}),
        "Fishr backpack, after anneal": build("Fishr", {"penalty_anneal_iters": 0, "gradvar_engine": "backpack"}),
    }
    batches = make_batches(args.warmup + args.steps)
    names = list(models)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for round_index, batch in enumerate(batches):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            update: Callable = models[name].update
            start, start_cpu = time.perf_counter(), time.process_time()
            update(batch)
            if round_index >= args.warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    wall_median = {name: statistics.median(values) for name, values in wall.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.steps} interleaved steps "
          f"after {args.warmup} warm-up rounds; MNIST_CNN, {len(TRAIN_ENVS)} domains x {BATCH}")
    print(f"{'model':34} {'wall ms':>9} {'x ERM':>7} {'CPU ms':>9} {'x ERM':>7}")
    for name in names:
        print(f"{name:34} {wall_median[name] * 1e3:9.1f} {wall_median[name] / wall_median['ERM']:7.3f} "
              f"{cpu_median[name] * 1e3:9.1f} {cpu_median[name] / cpu_median['ERM']:7.3f}")


if __name__ == "__main__":
    main()
