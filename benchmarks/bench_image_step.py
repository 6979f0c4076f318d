"""A Fishr training step against an ERM step on a ResNet, PACS-sized: the paper reports +2.7% time on PACS.

Synthetic PACS-shaped batches (3 training domains x 32 images, 7 classes, ImageNet-normalised noise at
`--image-size`) go straight to `algorithm.update()`, so this measures the update alone, not the input pipeline
(`bench_input_pipeline.py` measures that). Every model starts from the same initialisation and sees the same
batches; per round one step of each model is timed, in an order that rotates from round to round, after
`--warmup` rounds. On CUDA each step is timed between `torch.cuda.synchronize()` calls. Reported: median step time
and its ratio to ERM's, for Fishr before its anneal step (penalty computed, weight 0) and after it.

GPU (what the paper's number is about):
    .venv/bin/python benchmarks/bench_image_step.py --device cuda [--amp off,bf16]
CPU smoke run (ResNet-18 at 64 px, 3 x 8 images; minutes, not a measurement of the paper's setting):
    .venv/bin/python benchmarks/bench_image_step.py --device cpu --featurizer resnet18 --image-size 64 --batch 8 --steps 5 --warmup 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fishr_tune.algorithms import Algorithm, get_algorithm_class
from fishr_tune.hparams import apply_overrides, default_hparams

DATASET = "PACS"
NUM_CLASSES = 7
TRAIN_DOMAINS = 3


def build(algorithm: str, overrides: dict, image_size: int, device: torch.device) -> Algorithm:
    hparams = apply_overrides(algorithm, DATASET, default_hparams(algorithm, DATASET), overrides)
    torch.manual_seed(0)
    model = get_algorithm_class(algorithm)((3, image_size, image_size), NUM_CLASSES, TRAIN_DOMAINS, hparams)
    return model.to(device)


def make_batches(n: int, batch: int, image_size: int, device: torch.device) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(0)
    return [
        [(torch.randn(batch, 3, image_size, image_size, generator=generator).to(device),
          torch.randint(NUM_CLASSES, (batch,), generator=generator).to(device)) for _ in range(TRAIN_DOMAINS)]
        for _ in range(n)
    ]


def timed_update(model: Algorithm, batch: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    model.update(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--featurizer", default="resnet50", choices=["resnet50", "resnet18"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32, help="images per training domain (DomainBed's default: 32)")
    parser.add_argument("--amp", default="off", help="comma-separated amp settings to measure: off and/or bf16 (CUDA)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    batches = make_batches(args.warmup + args.steps, args.batch, args.image_size, device)
    never = 10**9
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}; "
          f"{args.featurizer} at {args.image_size} px, {TRAIN_DOMAINS} domains x {args.batch}; median of {args.steps} "
          f"interleaved steps after {args.warmup} warm-up rounds")
    print(f"{'amp':5} {'model':28} {'step ms':>9} {'x ERM':>7}")
    for amp in args.amp.split(","):
        common = {"featurizer": args.featurizer, "resnet_weights": "none", "image_size": args.image_size, "amp": amp}
        models = {
            "ERM": build("ERM", common, args.image_size, device),
            "Fishr, before anneal": build("Fishr", {**common, "penalty_anneal_iters": never}, args.image_size, device),
            "Fishr, after anneal": build("Fishr", {**common, "penalty_anneal_iters": 0}, args.image_size, device),
        }
        names = list(models)
        times: dict[str, list[float]] = {name: [] for name in names}
        for round_index, batch in enumerate(batches):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                elapsed = timed_update(models[name], batch, device)
                if round_index >= args.warmup:
                    times[name].append(elapsed)
        median = {name: statistics.median(values) for name, values in times.items()}
        for name in names:
            print(f"{amp:5} {name:28} {median[name] * 1e3:9.1f} {median[name] / median['ERM']:7.3f}")


if __name__ == "__main__":
    main()
