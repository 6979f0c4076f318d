"""Colored MNIST: DomainBed's three-environment version and the IRM paper's setup (used by the Fishr paper)."""

from __future__ import annotations

import torch

from fishr_tune.data.base import Environment, MultiDomainDataset, register_dataset
from fishr_tune.data.sources import load_mnist

DEFAULT_LABEL_NOISE = 0.25


def _bernoulli(p: float, n: int, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=generator) < p).long()


def color_digits(
    images: torch.Tensor,
    digits: torch.Tensor,
    color_flip: float,
    label_noise: float,
    generator: torch.Generator,
    subsample: bool = False,
    grayscale: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary label (digit < 5) flipped with `label_noise`; the colour agrees with it except with `color_flip`.

    The colour is the channel that keeps the digit (the other is zeroed). `grayscale` keeps both channels: the
    colour-free copy of an environment that the Fishr paper also evaluates on.
    """
    if subsample:
        images = images[:, ::2, ::2]
    labels = (digits < 5).long() ^ _bernoulli(label_noise, len(digits), generator)
    colors = labels ^ _bernoulli(color_flip, len(digits), generator)
    x = torch.stack([images, images], dim=1).float().div_(255.0)
    if not grayscale:
        x[torch.arange(len(x)), 1 - colors] = 0.0
    return x, labels


@register_dataset("ColoredMNIST", ("+90%", "+80%", "-90%"))
def colored_mnist(
    data_dir: str | None = None, download: bool = False, seed: int = 0, label_noise: float | None = None
) -> MultiDomainDataset:
    """DomainBed's ColoredMNIST: MNIST train+test shuffled, environment i gets every third image from i."""
    digits = load_mnist(data_dir, download)
    images, labels = digits.all_images()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    images, labels = images[order], labels[order]
    noise = DEFAULT_LABEL_NOISE if label_noise is None else label_noise
    environments = []
    for i, (name, flip) in enumerate(zip(("+90%", "+80%", "-90%"), (0.1, 0.2, 0.9))):
        x, y = color_digits(images[i::3], labels[i::3], flip, noise, generator)
        environments.append(Environment(name, x, y))
    return MultiDomainDataset(
        "ColoredMNIST", environments, (2, 28, 28), 2, digits.source, info={"label_noise": noise, "seed": seed}
    )


def irm_split(digits_count: int) -> int:
    """Training part of the IRM setup: 50,000 of MNIST's 60,000 training images, the same 5/6 for smaller sources."""
    return digits_count * 5 // 6


@register_dataset("ColoredMNIST-IRM", ("+80%", "+90%", "-90%"))
def colored_mnist_irm(
    data_dir: str | None = None,
    download: bool = False,
    seed: int = 0,
    label_noise: float | None = None,
    grayscale_test: bool = False,
) -> MultiDomainDataset:
    """The IRM paper's Colored MNIST (2x14x14): two training environments and a reversed-colour test environment.

    The first 5/6 of MNIST's training split is shuffled and split even/odd (colour flip 0.2 and 0.1); the
    last 1/6 is the test environment (flip 0.9). `grayscale_test` appends its colour-free copy as a fourth
    environment (for evaluation only; the reproduction command uses it, training never does).
    """
    digits = load_mnist(data_dir, download)
    generator = torch.Generator().manual_seed(seed)
    cut = irm_split(len(digits.train_labels))
    order = torch.randperm(cut, generator=generator)
    train_images, train_labels = digits.train_images[:cut][order], digits.train_labels[:cut][order]
    test_images, test_labels = digits.train_images[cut:], digits.train_labels[cut:]
    noise = DEFAULT_LABEL_NOISE if label_noise is None else label_noise
    parts = [
        ("+80%", train_images[::2], train_labels[::2], 0.2, False),
        ("+90%", train_images[1::2], train_labels[1::2], 0.1, False),
        ("-90%", test_images, test_labels, 0.9, False),
    ]
    if grayscale_test:
        parts.append(("gray", test_images, test_labels, 0.9, True))
    environments = []
    for name, images, labels, flip, gray in parts:
        x, y = color_digits(images, labels, flip, noise, generator, subsample=True, grayscale=gray)
        environments.append(Environment(name, x, y))
    return MultiDomainDataset(
        "ColoredMNIST-IRM", environments, (2, 14, 14), 2, digits.source, info={"label_noise": noise, "seed": seed}
    )
