"""`amp: bf16` against fp32 on the CPU: step time and accuracy at equal steps, ColoredMNIST-IRM (MLP) and MNIST_CNN.

Per dataset, two Trainers with the same seeds (same initialisation, same minibatches) train side by side: per round
one step of each, in an order that alternates between rounds, so machine load falls on both alike. Reported: the
median time of one training step (minibatch + update, no evaluation), its bf16 / fp32 ratio, and the records
(training-domain val_acc, test env `in` accuracy) at the same final step.

    .venv/bin/python benchmarks/bench_cpu_bf16.py [--mlp-steps 400] [--cnn-steps 60] [--threads 1] [--json out.json]

Needs a CPU with native bfloat16 (avx512_bf16 or AMX); elsewhere fishr-tune refuses amp: bf16 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import torch
from report import emit

from fishr_tune.networks import amp_unsupported_reason
from fishr_tune.training import TrainConfig, Trainer

CASES = {"ColoredMNIST-IRM": "mlp", "ColoredMNIST": "mnist_cnn"}


def compare(dataset: str, algorithm: str, steps: int) -> dict[str, Any]:
    trainers = {
        amp: Trainer(TrainConfig(dataset=dataset, algorithm=algorithm, test_envs=[2], steps=steps, checkpoint_freq=steps,
                                 device="cpu", hparams={"amp": amp}))
        for amp in ("off", "bf16")
    }
    times: dict[str, list[float]] = {amp: [] for amp in trainers}
    for step in range(steps):
        order = ["off", "bf16"] if step % 2 == 0 else ["bf16", "off"]
        for amp in order:
            started = time.perf_counter()
            trainers[amp].train_step()
            times[amp].append(time.perf_counter() - started)
    result: dict[str, Any] = {"dataset": dataset, "featurizer": CASES[dataset], "algorithm": algorithm, "steps": steps}
    for amp, trainer in trainers.items():
        record = trainer.make_record()
        name = "fp32" if amp == "off" else "bf16"
        warm = times[amp][min(5, steps // 10):]  # the first steps include oneDNN's kernel selection
        result[f"{name}_step_ms"] = round(1e3 * statistics.median(warm), 3)
        result[f"{name}_val_acc"] = round(record["val_acc"], 4)
        result[f"{name}_test_in_acc"] = round(record["env2_in_acc"], 4)
        result[f"{name}_loss"] = round(record["loss"], 6)
    result["bf16_over_fp32_step_time"] = round(result["bf16_step_ms"] / result["fp32_step_ms"], 3)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlp-steps", type=int, default=400)
    parser.add_argument("--cnn-steps", type=int, default=60)
    parser.add_argument("--algorithms", default="ERM,Fishr")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a sweep trial with cpu: 1 uses one)")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    reason = amp_unsupported_reason("bf16", torch.device("cpu"))
    if reason is not None:
        print(f"bench_cpu_bf16.py: {reason}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
                              "load_average_at_start": os.getloadavg(), "cases": []}
    for algorithm in args.algorithms.split(","):
        for dataset, steps in (("ColoredMNIST-IRM", args.mlp_steps), ("ColoredMNIST", args.cnn_steps)):
            case = compare(dataset, algorithm, steps)
            print(json.dumps(case), flush=True)
            report["cases"].append(case)
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
