"""DomainBed's image datasets as data: names, folders, environments, class counts and published sizes. A leaf, so
the loader, the downloader and the checks all read one table without importing each other."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ImageDatasetInfo:
    """What DomainBed defines for one dataset, plus the published sizes `data check` compares against."""

    name: str
    directory: str
    env_names: tuple[str, ...]
    env_dirs: tuple[str, ...]  # sorted: environment i is env_dirs[i]
    num_classes: int
    images_per_env: tuple[int, ...] | None  # published counts, where known per environment
    total_images: int
    checkpoint_freq: int
    n_steps: int = 5001


IMAGE_DATASETS: dict[str, ImageDatasetInfo] = {
    info.name: info
    for info in (
        ImageDatasetInfo("VLCS", "VLCS", ("C", "L", "S", "V"), ("Caltech101", "LabelMe", "SUN09", "VOC2007"),
                         5, (1415, 2656, 3282, 3376), 10729, 300),
        ImageDatasetInfo("PACS", "PACS", ("A", "C", "P", "S"), ("art_painting", "cartoon", "photo", "sketch"),
                         7, (2048, 2344, 1670, 3929), 9991, 300),
        ImageDatasetInfo("OfficeHome", "office_home", ("A", "C", "P", "R"), ("Art", "Clipart", "Product", "Real World"),
                         65, (2427, 4365, 4439, 4357), 15588, 300),
        # Per-location counts depend on the annotation release DomainBed's script downloads: only the total is published.
        ImageDatasetInfo("TerraIncognita", "terra_incognita", ("L100", "L38", "L43", "L46"),
                         ("location_100", "location_38", "location_43", "location_46"), 10, None, 24788, 300),
        ImageDatasetInfo("DomainNet", "domain_net", ("clip", "info", "paint", "quick", "real", "sketch"),
                         ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
                         345, (48129, 51605, 72266, 172500, 172947, 69128), 586575, 1000),
    )
}


def dataset_root(info: ImageDatasetInfo, data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir).expanduser() / info.directory


def layout_hint(info: ImageDatasetInfo, root: Path) -> str:
    return f"DomainBed's layout {root}/{{{','.join(info.env_dirs)}}}/<class>/<image>"
