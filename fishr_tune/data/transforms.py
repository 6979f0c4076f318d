"""DomainBed's image transforms, producing uint8 tensors: normalization happens on the training device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fishr_tune.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


MIN_IMAGE_SIZE = 32  # ResNets downsample 32x: below this the feature map is empty


def check_image_size(size: int) -> None:
    if size < MIN_IMAGE_SIZE:
        raise ConfigError(f"hyperparameter image_size: must be at least {MIN_IMAGE_SIZE} (ResNets downsample 32x), got {size}")


def training_transform(size: int) -> Callable[[Any], torch.Tensor]:
    """DomainBed's augmentation: random resized crop (scale 0.7-1), flip, colour jitter 0.3, random grayscale."""
    from torchvision import transforms

    check_image_size(size)
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.7, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(0.3, 0.3, 0.3, 0.3),
        transforms.RandomGrayscale(),
        transforms.PILToTensor(),
    ])


def evaluation_transform(size: int) -> Callable[[Any], torch.Tensor]:
    """DomainBed's evaluation transform: a resize to size x size, nothing random."""
    from torchvision import transforms

    check_image_size(size)
    return transforms.Compose([transforms.Resize((size, size)), transforms.PILToTensor()])


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W to float ImageNet-normalized, the same operations as ToTensor then Normalize."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return images.float().div_(255.0).sub_(mean).div_(std)
