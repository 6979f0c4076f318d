from __future__ import annotations

import math

import pytest
import torch

from fishr_tune.data import get_dataset
from fishr_tune.data.colored_mnist import DEFAULT_LABEL_NOISE, color_digits, irm_split
from fishr_tune.data.sources import load_embedded


def colour_of(x: torch.Tensor) -> torch.Tensor:
    """The channel that holds the digit (the other is zeroed)."""
    return (x[:, 1].flatten(1).sum(dim=1) > 0).long()


def agreement(env) -> float:
    return (colour_of(env.x) == env.y).float().mean().item()


def test_color_digits_label_noise_and_colour_flip_rates() -> None:
    n = 40_000
    digits = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(1))
    images = torch.full((n, 28, 28), 200, dtype=torch.uint8)
    x, y = color_digits(images, digits, color_flip=0.2, label_noise=0.25, generator=torch.Generator().manual_seed(2))
    noise = (y != (digits < 5).long()).float().mean().item()
    assert noise == pytest.approx(0.25, abs=0.01)
    assert (colour_of(x) == y).float().mean().item() == pytest.approx(0.8, abs=0.01)
    # exactly one channel carries the digit, scaled to [0, 1]
    assert torch.all((x[:, 0].amax(dim=(1, 2)) == 0) ^ (x[:, 1].amax(dim=(1, 2)) == 0))
    assert x.max().item() == pytest.approx(200 / 255)


def test_grayscale_keeps_both_channels() -> None:
    images = torch.full((10, 28, 28), 255, dtype=torch.uint8)
    x, _ = color_digits(images, torch.arange(10), 0.9, 0.25, torch.Generator().manual_seed(0), subsample=True, grayscale=True)
    assert x.shape == (10, 2, 14, 14)
    assert torch.equal(x[:, 0], x[:, 1])


def test_domainbed_colored_mnist_environment_statistics() -> None:
    dataset = get_dataset("ColoredMNIST")
    assert dataset.env_names == ["+90%", "+80%", "-90%"]
    assert dataset.input_shape == (2, 28, 28) and dataset.num_classes == 2
    assert [len(e) for e in dataset.environments] == [1667, 1667, 1666]
    for env, expected in zip(dataset.environments, (0.9, 0.8, 0.1)):
        assert env.x.shape[1:] == (2, 28, 28)
        assert agreement(env) == pytest.approx(expected, abs=0.03)
        assert env.y.float().mean().item() == pytest.approx(0.5, abs=0.05)


def test_irm_colored_mnist_environment_statistics() -> None:
    dataset = get_dataset("ColoredMNIST-IRM")
    assert dataset.env_names == ["+80%", "+90%", "-90%"]
    assert dataset.input_shape == (2, 14, 14)
    # 5/6 of the 5,000 embedded digits split even/odd, the last 1/6 is the test environment
    assert [len(e) for e in dataset.environments] == [2083, 2083, 834]
    for env, expected in zip(dataset.environments, (0.8, 0.9, 0.1)):
        assert env.x.shape[1:] == (2, 14, 14)
        assert agreement(env) == pytest.approx(expected, abs=0.035)


def source_digits(name: str, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each environment's uint8 images and original digit labels, rebuilt from the embedded source the way the
    dataset splits it (the seeded generator's first draw is the shuffle)."""
    digits = load_embedded()
    generator = torch.Generator().manual_seed(seed)
    if name == "ColoredMNIST":
        images, labels = digits.all_images()
        order = torch.randperm(len(labels), generator=generator)
        images, labels = images[order], labels[order]
        return [(images[i::3], labels[i::3]) for i in range(3)]
    cut = irm_split(len(digits.train_labels))
    order = torch.randperm(cut, generator=generator)
    train_images, train_labels = digits.train_images[:cut][order], digits.train_labels[:cut][order]
    parts = [(train_images[::2], train_labels[::2]), (train_images[1::2], train_labels[1::2])]
    parts.append((digits.train_images[cut:], digits.train_labels[cut:]))
    return [(images[:, ::2, ::2], labels) for images, labels in parts]


def label_disagreement(name: str, seed: int = 0, **kwargs: float) -> list[tuple[int, int]]:
    """Per environment: (samples whose label is not digit < 5, samples), after checking the rebuilt digits are the
    environment's own (the digit's pixels, in whichever channel holds them)."""
    dataset = get_dataset(name, seed=seed, **kwargs)
    counts = []
    for env, (images, digits) in zip(dataset.environments, source_digits(name, seed)):
        assert torch.equal(env.x.sum(dim=1), images.float() / 255.0), "rebuilt source digits are not this environment's"
        counts.append((int((env.y != (digits < 5).long()).sum()), len(digits)))
    return counts


@pytest.mark.parametrize("name", ["ColoredMNIST", "ColoredMNIST-IRM"])
@pytest.mark.parametrize("seed", [0, 1])
def test_real_environments_flip_a_quarter_of_the_labels(name: str, seed: int) -> None:
    counts = label_disagreement(name, seed)
    p = DEFAULT_LABEL_NOISE
    # flips are independent Bernoulli(p): allow 4 binomial standard deviations, per environment and pooled
    for flipped, n in counts:
        assert flipped / n == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))
    total = sum(n for _, n in counts)
    pooled = sum(flipped for flipped, _ in counts) / total
    assert pooled == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / total))


@pytest.mark.parametrize("name", ["ColoredMNIST", "ColoredMNIST-IRM"])
def test_real_environments_without_label_noise_keep_every_label(name: str) -> None:
    assert [flipped for flipped, _ in label_disagreement(name, label_noise=0.0)] == [0, 0, 0]


def test_irm_label_noise_is_configurable_and_gray_copy_is_optional() -> None:
    clean = get_dataset("ColoredMNIST-IRM", label_noise=0.0, grayscale_test=True)
    assert clean.env_names[-1] == "gray"
    gray, test = clean.environments[3], clean.environments[2]
    assert torch.equal(gray.y, test.y)
    assert torch.equal(gray.x.sum(dim=1), test.x.sum(dim=1) * 2)
    assert clean.info["label_noise"] == 0.0


def test_same_seed_same_data_other_seed_other_colours() -> None:
    a, b, c = (get_dataset("ColoredMNIST-IRM", seed=s) for s in (3, 3, 4))
    assert torch.equal(a.environments[0].x, b.environments[0].x)
    assert not torch.equal(a.environments[0].y, c.environments[0].y)


def test_full_mnist_irm_split_sizes(full_mnist_dir) -> None:
    dataset = get_dataset("ColoredMNIST-IRM", data_dir=str(full_mnist_dir))
    assert [len(e) for e in dataset.environments] == [25_000, 25_000, 10_000]
    for env, expected in zip(dataset.environments, (0.8, 0.9, 0.1)):
        assert agreement(env) == pytest.approx(expected, abs=0.015)
