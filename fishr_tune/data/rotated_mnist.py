"""DomainBed's RotatedMNIST: six environments of digits rotated by 0 to 75 degrees, ten classes."""

from __future__ import annotations

import torch

from fishr_tune.data.base import Environment, MultiDomainDataset, register_dataset
from fishr_tune.data.sources import load_mnist
from fishr_tune.errors import ConfigError

ANGLES = (0, 15, 30, 45, 60, 75)


def rotate_digits(images: torch.Tensor, angle: float) -> torch.Tensor:
    """uint8 N x 28 x 28 -> float N x 1 x 28 x 28 in [0, 1], rotated counter-clockwise (bilinear, black fill).

    torchvision is imported here, not at module level: importing it costs ~1.2 s (it pulls in torch._dynamo), which
    every CLI call and every sweep worker would otherwise pay whatever the dataset.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import rotate

    x = images.unsqueeze(1).float().div_(255.0)
    return rotate(x, angle, interpolation=InterpolationMode.BILINEAR, fill=[0.0])


@register_dataset("RotatedMNIST", tuple(str(a) for a in ANGLES))
def rotated_mnist(
    data_dir: str | None = None, download: bool = False, seed: int = 0, label_noise: float | None = None
) -> MultiDomainDataset:
    if label_noise is not None:
        raise ConfigError("--label-noise: RotatedMNIST has no label noise (it applies to the Colored MNIST datasets)")
    digits = load_mnist(data_dir, download)
    images, labels = digits.all_images()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    images, labels = images[order], labels[order]
    environments = [
        Environment(str(angle), rotate_digits(images[i :: len(ANGLES)], angle), labels[i :: len(ANGLES)].clone())
        for i, angle in enumerate(ANGLES)
    ]
    return MultiDomainDataset("RotatedMNIST", environments, (1, 28, 28), 10, digits.source, info={"seed": seed})
