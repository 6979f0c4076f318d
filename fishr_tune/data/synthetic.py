"""Miniature image datasets in DomainBed's folder layout, for tests and demos: real image files, tiny and random."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from fishr_tune.data.catalog import IMAGE_DATASETS, dataset_root


def write_synthetic_dataset(
    name: str,
    data_dir: str | os.PathLike[str],
    classes: Sequence[str] = ("class_a", "class_b", "class_c"),
    images_per_class: int | Sequence[int] = 4,
    size: tuple[int, int] = (40, 32),
    image_format: str = "JPEG",
    seed: int = 0,
) -> Path:
    """A miniature of `name`'s folder layout with generated images (class-coloured noise), for smoke tests and
    benchmarks on machines without the real data. Returns the dataset folder."""
    import numpy as np
    from PIL import Image

    info = IMAGE_DATASETS[name]
    root = dataset_root(info, data_dir)
    rng = np.random.RandomState(seed)
    counts = [images_per_class] * len(info.env_dirs) if isinstance(images_per_class, int) else list(images_per_class)
    suffix = {"JPEG": ".jpg", "PNG": ".png"}[image_format]
    for env_index, (env_dir, count) in enumerate(zip(info.env_dirs, counts)):
        for class_index, class_name in enumerate(classes):
            folder = root / env_dir / class_name
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array([(class_index * 97) % 256, (env_index * 61) % 256, 128], dtype=np.float64)
            for k in range(count):
                noise = rng.normal(0.0, 40.0, size=(size[1], size[0], 3))
                pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"img_{k:04d}{suffix}", format=image_format)
    return root
