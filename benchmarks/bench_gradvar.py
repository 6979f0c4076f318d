"""Gradient-variance engines: time of Fishr penalty + backward, and peak memory, on two head sizes.

Cases: (a) DomainBed's MNIST_CNN head (128 features -> 2 classes, 2 domains x 64) and (b) a ResNet-50-sized
head (2048 features -> 345 classes, DomainNet, 5 domains x 32). Each measurement is: per-domain variances with a
graph (as after Fishr's anneal step), the Fishr penalty, and its backward into the features and the head.

Time: the median over `--repeats` runs, the engines measured round-robin in one process (so a machine shared
with other jobs slows every engine alike), after one warm-up run each.
Floor: the same measurement with no variance arithmetic (head forward, penalty, backward): a lower bound for
every engine, so `backpack / floor` bounds the speed-up any engine can show over BackPACK on that head.
Memory: each (case, engine) runs in a fresh subprocess; after building the inputs the child resets the kernel's
peak-RSS counter (``/proc/self/clear_refs``) after one warm-up run, runs penalty + backward twice, and reports peak RSS (VmHWM) minus
the RSS before the runs: the extra host memory the engine needed at its high-water mark (allocator caching
included; CPU only). ``ru_maxrss`` is not used: on Linux a child inherits its parent's value across exec.

    .venv/bin/python benchmarks/bench_gradvar.py [--repeats 15] [--repeats-large 5] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

from fishr_tune.gradvar import ENGINES, fishr_penalty, get_engine


@dataclass(frozen=True)
class Case:
    name: str
    n_features: int
    n_classes: int
    domain_sizes: tuple[int, ...]


CASES = {
    "mnist_cnn": Case("MNIST_CNN head 128->2, 2x64", 128, 2, (64, 64)),
    "resnet50": Case("ResNet-50 head 2048->345, 5x32", 2048, 345, (32,) * 5),
}


def make_inputs(case: Case) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    head = nn.Linear(case.n_features, case.n_classes)
    n = sum(case.domain_sizes)
    features = torch.relu(torch.randn(n, case.n_features)).requires_grad_(True)
    labels = torch.randint(case.n_classes, (n,))
    return head, features, labels


def penalty_and_backward(engine_name: str, head: nn.Module, features: torch.Tensor, labels: torch.Tensor, case: Case) -> None:
    variances = get_engine(engine_name).per_domain(head, features, labels, list(case.domain_sizes))
    fishr_penalty(variances).backward()
    features.grad = None
    for p in head.parameters():
        p.grad = None


FLOOR = "floor"


def floor_and_backward(head: nn.Module, features: torch.Tensor, case: Case) -> None:
    """What every engine's measurement also pays: the head's forward, a D x P result tied to it, the penalty and
    the backward into features and head, with no variance arithmetic at all. No engine can be faster."""
    logits = head(features)
    n_params = sum(p.numel() for p in head.parameters())
    fishr_penalty(logits[:1, :1].expand(len(case.domain_sizes), n_params) * 1.0).backward()
    features.grad = None
    for p in head.parameters():
        p.grad = None


def time_case(case: Case, repeats: int) -> dict[str, float]:
    """Median time per engine, and of the `floor` (see floor_and_backward), interleaved round-robin."""
    head, features, labels = make_inputs(case)
    heads = {name: get_engine(name).prepare(copy.deepcopy(head)) for name in sorted(ENGINES)}
    runs = {name: (lambda name=name, h=h: penalty_and_backward(name, h, features, labels, case)) for name, h in heads.items()}
    runs[FLOOR] = lambda: floor_and_backward(head, features, case)
    for run in runs.values():  # warm-up
        run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def peak_memory_mib(case_key: str, engine: str) -> float:
    """Run one (case, engine) in a fresh interpreter; ru_maxrss growth during two runs, in MiB."""
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", case_key, engine], check=True, capture_output=True, text=True
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_mib"])


def proc_status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(case_key: str, engine: str) -> None:
    case = CASES[case_key]
    head, features, labels = make_inputs(case)
    head = get_engine(engine).prepare(head)
    penalty_and_backward(engine, head, features, labels, case)  # warm-up: lazy initialisation is not the engine's
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    before = proc_status_kib("VmRSS")
    for _ in range(2):
        penalty_and_backward(engine, head, features, labels, case)
    peak = proc_status_kib("VmHWM")
    print(json.dumps({"peak_growth_mib": (peak - before) / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per engine, small head")
    parser.add_argument("--repeats-large", type=int, default=5, help="timed runs per engine, ResNet-50 head")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--memory-child", nargs=2, metavar=("CASE", "ENGINE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats} (small head) / "
          f"{args.repeats_large} (ResNet-50 head) interleaved runs")
    header = f"{'case':34} {'engine':12} {'time ms':>9} {'x closed_form':>14} {'peak MiB':>9} {'x closed_form':>14}"
    print(header)
    print("-" * len(header))
    for key, case in CASES.items():
        times = time_case(case, args.repeats if key == "mnist_cnn" else args.repeats_large)
        memory = {name: peak_memory_mib(key, name) for name in sorted(ENGINES)}
        for name in sorted(ENGINES):
            # Below 1 MiB the RSS growth is allocator noise (pages reused from the warm-up): no ratio then.
            mem_ratio = f"{memory[name] / memory['closed_form']:14.1f}" if memory["closed_form"] >= 1 else f"{'n/a':>14}"
            print(f"{case.name:34} {name:12} {times[name] * 1e3:9.2f} {times[name] / times['closed_form']:14.1f} "
                  f"{memory[name]:9.1f} {mem_ratio}")
        print(f"{case.name:34} {FLOOR:12} {times[FLOOR] * 1e3:9.2f} {times[FLOOR] / times['closed_form']:14.1f} "
              f"{'':>9} {'':>14}   (no engine can be faster; backpack / floor = {times['backpack'] / times[FLOOR]:.1f}x)")


if __name__ == "__main__":
    main()
