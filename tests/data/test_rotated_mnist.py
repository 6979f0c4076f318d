from __future__ import annotations

import pytest
import torch

from fishr_tune.data import get_dataset
from fishr_tune.data.rotated_mnist import rotate_digits
from fishr_tune.errors import ConfigError


def test_environments_and_shapes() -> None:
    dataset = get_dataset("RotatedMNIST")
    assert dataset.env_names == ["0", "15", "30", "45", "60", "75"]
    assert dataset.num_classes == 10 and dataset.input_shape == (1, 28, 28)
    assert sum(len(e) for e in dataset.environments) == 5000
    for env in dataset.environments:
        assert env.x.shape[1:] == (1, 28, 28)
        assert set(env.y.unique().tolist()) == set(range(10))


def test_rotation_angle_is_the_environment_angle() -> None:
    # A horizontal bar rotated by 90 degrees becomes a vertical bar; by 0 it stays put.
    bar = torch.zeros(1, 28, 28, dtype=torch.uint8)
    bar[0, 13:15, 4:24] = 255
    assert torch.allclose(rotate_digits(bar, 0)[0, 0], bar[0].float() / 255)
    vertical = rotate_digits(bar, 90)[0, 0]
    assert vertical[4:24, 13:15].mean() > 0.9 and vertical[13:15, 2:5].mean() < 0.1


def test_rotated_environment_matches_rotating_the_unrotated_one() -> None:
    dataset = get_dataset("RotatedMNIST")
    # environment i holds images[i::6] of the same shuffled digits; compare mass moved off-centre by 75 degrees
    upright, rotated = dataset.environments[0].x, dataset.environments[5].x
    assert upright.shape[1:] == rotated.shape[1:]
    column_profile = lambda x: x.sum(dim=(0, 1, 2))  # noqa: E731
    # upright digits are taller than wide; rotating by 75 degrees makes the column profile spread out
    spread = lambda p: ((torch.arange(28.0) - 13.5) ** 2 * p).sum() / p.sum()  # noqa: E731
    assert spread(column_profile(rotated)) > spread(column_profile(upright))


def test_label_noise_is_rejected() -> None:
    with pytest.raises(ConfigError, match="RotatedMNIST has no label noise"):
        get_dataset("RotatedMNIST", label_noise=0.1)
