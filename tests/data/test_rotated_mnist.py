from __future__ import annotations

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import rotate

from fishr_tune.data import get_dataset
from fishr_tune.data.rotated_mnist import ANGLES, rotate_digits
from fishr_tune.data.sources import load_embedded
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


def source_digits(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each environment's unrotated digits and labels, rebuilt from the embedded source: shuffled with the
    dataset's seed, environment i takes every sixth image from i."""
    digits = load_embedded()
    images, labels = digits.all_images()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    images, labels = images[order], labels[order]
    return [(images[i :: len(ANGLES)], labels[i :: len(ANGLES)]) for i in range(len(ANGLES))]


def torchvision_rotation(images: torch.Tensor, angle: float) -> torch.Tensor:
    """Independent of rotate_digits: uint8 digits to [0, 1] floats, then torchvision's bilinear rotation."""
    return rotate(images[:, None].float() / 255.0, angle, interpolation=InterpolationMode.BILINEAR, fill=[0.0])


@pytest.mark.parametrize("seed", [0, 3])
def test_every_environment_is_its_source_digits_rotated_by_its_angle(seed: int) -> None:
    dataset = get_dataset("RotatedMNIST", seed=seed)
    sources = source_digits(seed)
    assert dataset.env_names == [str(a) for a in ANGLES]
    for env, angle, (images, labels) in zip(dataset.environments, ANGLES, sources):
        assert torch.equal(env.y, labels)
        torch.testing.assert_close(env.x, torchvision_rotation(images, angle), rtol=0, atol=1e-6)
        for wrong in (angle + 15, -angle if angle else 15):  # the next environment's angle, or clockwise
            assert (env.x - torchvision_rotation(images, wrong)).abs().max() > 0.5, f"{angle} matches {wrong}"


def test_label_noise_is_rejected() -> None:
    with pytest.raises(ConfigError, match="RotatedMNIST has no label noise"):
        get_dataset("RotatedMNIST", label_noise=0.1)


def test_importing_the_datasets_or_the_sweep_trainable_leaves_torchvision_unloaded() -> None:
    """torchvision costs ~1.2 s to import; every sweep worker imports the trainable, whatever the dataset."""
    import subprocess
    import sys

    code = "import sys, fishr_tune.data, fishr_tune.sweep.trainable; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"
