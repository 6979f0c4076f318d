"""Images per second of the image-dataset training input pipeline on the CPU, and the share of a training step
spent waiting for data.

Generated 300x300 JPEGs in PACS's layout (realistic sizes: PACS's are 227x227, DomainNet's up to ~500 px) go
through `FileBackedSplits`: decode, DomainBed's augmentation, uint8 batches, normalization. Then a ResNet-18
ERM Trainer (random init, small resolution: CPU-sized) times `minibatches()` against `algorithm.update()`.

    .venv/bin/python benchmarks/bench_input_pipeline.py [--images-per-env 60] [--batches 15] [--workers 0,1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import torch

from fishr_tune.data import get_dataset, holdout_split
from fishr_tune.data.images import write_synthetic_dataset
from fishr_tune.data.loaders import FileBackedSplits
from fishr_tune.training import Trainer, make_config


def pipeline_rate(dataset, workers: int, batch_size: int, image_size: int, batches: int) -> float:
    """Training images per second delivered by minibatches() (after two warm-up batches)."""
    indices = {}
    for i, env in enumerate(dataset.environments):
        in_idx, out_idx = holdout_split(len(env), 0.2, 0, i)
        indices[i] = {"in": in_idx, "out": out_idx}
    hparams = {"batch_size": batch_size, "image_size": image_size, "data_augmentation": True}
    splits = FileBackedSplits(dataset.environments, indices, [1, 2, 3], hparams, torch.device("cpu"), 0, workers)
    try:
        for _ in range(2):
            splits.minibatches()
        start = time.perf_counter()
        for _ in range(batches):
            splits.minibatches()
        elapsed = time.perf_counter() - start
    finally:
        splits.close()
    return batches * 3 * batch_size / elapsed


def waiting_share(data_dir: str, workers: int, batch_size: int, image_size: int, steps: int) -> tuple[float, float, float]:
    """(seconds per step waiting for data, seconds per update, waiting share) for ResNet-18 ERM."""
    config = make_config(dict(dataset="PACS", algorithm="ERM", test_envs=[0], steps=steps + 2, data_dir=data_dir, device="cpu",
                              num_workers=workers, hparams={"featurizer": "resnet18", "image_size": image_size,
                                                            "batch_size": batch_size, "resnet_weights": "none"}), "bench")
    trainer = Trainer(config)
    try:
        for _ in range(2):
            trainer.algorithm.update(trainer.minibatches())
        wait = compute = 0.0
        for _ in range(steps):
            start = time.perf_counter()
            batch = trainer.minibatches()
            middle = time.perf_counter()
            trainer.algorithm.update(batch)
            end = time.perf_counter()
            wait += middle - start
            compute += end - middle
    finally:
        trainer.close()
    return wait / steps, compute / steps, wait / (wait + compute)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-env", type=int, default=60)
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--workers", default="0,1")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as data_dir:
        os.environ["FISHR_TUNE_CACHE"] = os.path.join(data_dir, "cache")
        start = time.perf_counter()
        write_synthetic_dataset("PACS", data_dir, classes=("dog", "horse", "person"),
                                images_per_class=args.images_per_env // 3, size=(300, 300))
        print(f"generated {4 * 3 * (args.images_per_env // 3)} JPEGs of 300x300 in {time.perf_counter() - start:.1f} s")
        dataset = get_dataset("PACS", data_dir=data_dir)
        print(f"CPUs available: {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.1f}")
        print("\n| pipeline | workers | images/s |\n|---|---|---|")
        for size, batch in ((224, 32), (64, 32)):
            for w in workers:
                rate = pipeline_rate(dataset, w, batch, size, args.batches)
                print(f"| augment + {size}x{size}, 3 domains x {batch} | {w} | {rate:.0f} |")
        print("\n| ResNet-18 ERM step | workers | data wait s/step | update s/step | waiting share |\n|---|---|---|---|---|")
        for size, batch in ((64, 16),):
            for w in workers:
                wait, compute, share = waiting_share(data_dir, w, batch, size, args.steps)
                print(f"| {size}x{size}, 3 domains x {batch} | {w} | {wait:.3f} | {compute:.3f} | {100 * share:.0f}% |")


if __name__ == "__main__":
    main()
