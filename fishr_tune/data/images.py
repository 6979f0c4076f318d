"""DomainBed's image datasets (VLCS, PACS, OfficeHome, TerraIncognita, DomainNet) read from DomainBed's folders.

Layout, as DomainBed's download script leaves it: ``DATA_DIR/<dataset folder>/<environment folder>/<class>/<image>``.
Environments are the environment folders in sorted order and labels the class folders in sorted order (as
torchvision's ImageFolder), so a DomainBed data directory works as it is and gives the same in/out splits.
Unlike DomainBed, a layout that would silently shift labels or environments (a class folder missing from one
environment, an extra environment folder) is refused with an error that names the folder.

Listing DomainNet's 586,575 files takes a while on network storage, so the listing is cached as JSON (in
``$FISHR_TUNE_CACHE``, default ``~/.cache/fishr-tune/index``) and reused while the modification times of the
dataset, environment and class folders are unchanged (adding or removing an image changes its folder's).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fishr_tune.data.base import FileEnvironment, MultiDomainDataset, register_dataset
from fishr_tune.data.catalog import IMAGE_DATASETS, ImageDatasetInfo, dataset_root, layout_hint
from fishr_tune.data.download import download_dataset
from fishr_tune.data.layout import (
    EnvironmentListing,
    check_environment_folders,
    check_same_classes,
    list_environment,
)
from fishr_tune.data.sources import DATA_ENV_VAR
from fishr_tune.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_ENV_VAR = "FISHR_TUNE_CACHE"
INDEX_VERSION = 1
MIN_IMAGE_SIZE = 32  # ResNets downsample 32x: below this the feature map is empty


# ---------------------------------------------------------------------------------------------------------------
# The cached index


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "fishr-tune").expanduser() / "index"


def index_file(root: Path) -> Path:
    digest = hashlib.sha1(str(root.resolve()).encode("utf-8")).hexdigest()[:16]
    return cache_dir() / f"{root.name.replace(' ', '_')}-{digest}.json"


def folder_stamps(root: Path, listings: dict[str, EnvironmentListing]) -> dict[str, int]:
    """Modification times (ns) of the dataset, environment and class folders: a file added or removed changes one."""
    stamps = {".": root.stat().st_mtime_ns}
    for env_dir, listing in listings.items():
        stamps[env_dir] = (root / env_dir).stat().st_mtime_ns
        for name in listing.classes:
            stamps[f"{env_dir}/{name}"] = (root / env_dir / name).stat().st_mtime_ns
    return stamps


def read_index(root: Path) -> dict[str, EnvironmentListing] | None:
    """The cached listing when every folder it covers is unchanged; None otherwise (or when there is none)."""
    path = index_file(root)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("version") != INDEX_VERSION or data.get("root") != str(root.resolve()):
        return None
    try:
        for relative, stamp in data["stamps"].items():
            if (root / relative).stat().st_mtime_ns != stamp:
                return None
    except OSError:
        return None
    try:
        listings = {
            env_dir: EnvironmentListing(str(root / env_dir), entry["classes"], entry["files"])
            for env_dir, entry in data["environments"].items()
        }
        names = [*listings, *(c for v in listings.values() for c in v.classes),
                 *(f for v in listings.values() for files in v.files.values() for f in files)]
    except (AttributeError, KeyError, TypeError):
        return None
    if not all(_plain_name(name) for name in names):
        return None  # a tampered cache must not send the loader outside the dataset folder: list it again
    return listings


def _plain_name(name: object) -> bool:
    """One folder or file name, as a listing holds them: no separator, not `.` or `..`."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name


def write_index(root: Path, listings: dict[str, EnvironmentListing]) -> None:
    """Best effort: a read-only cache directory only costs the next run a re-scan."""
    path = index_file(root)
    data = {
        "version": INDEX_VERSION,
        "root": str(root.resolve()),
        "stamps": folder_stamps(root, listings),
        "environments": {k: {"classes": v.classes, "files": v.files} for k, v in listings.items()},
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        return


def scan_dataset(info: ImageDatasetInfo, root: Path) -> dict[str, EnvironmentListing]:
    """List and check every environment folder (no cache)."""
    check_environment_folders(info, root)
    listings = {env_dir: list_environment(root / env_dir) for env_dir in info.env_dirs}
    check_same_classes(list(listings.values()))
    return listings


def index_dataset(info: ImageDatasetInfo, root: Path, use_cache: bool = True) -> dict[str, EnvironmentListing]:
    """The checked listing of every environment, from the cache when the folders are unchanged."""
    if use_cache:
        cached = read_index(root)
        if cached is not None and list(cached) == list(info.env_dirs):
            return cached
    listings = scan_dataset(info, root)
    if use_cache:
        write_index(root, listings)
    return listings


# ---------------------------------------------------------------------------------------------------------------
# Transforms (DomainBed's), producing uint8 tensors: normalization happens on the training device


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


# ---------------------------------------------------------------------------------------------------------------
# The datasets


def resolve_data_dir(info: ImageDatasetInfo, data_dir: str | os.PathLike[str] | None) -> Path:
    if data_dir is None:
        data_dir = os.environ.get(DATA_ENV_VAR) or None
    if data_dir is None:
        raise ConfigError(
            f"{info.name} is read from files: pass --data-dir DIR (or set ${DATA_ENV_VAR}) with "
            f"{layout_hint(info, Path('DIR') / info.directory)}; fetch it with `fishr-tune data download {info.name} --data-dir DIR`"
        )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise ConfigError(f"--data-dir: {path} is not a directory")
    return path


def load_image_dataset(
    info: ImageDatasetInfo,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    label_noise: float | None = None,
    use_cache: bool = True,
) -> MultiDomainDataset:
    """The environments as file lists (labels from the sorted class folders); pixels are read by the loaders."""
    del seed  # the image datasets are fixed; the trial seed only draws the in/out splits
    if label_noise is not None:
        raise ConfigError(f"--label-noise applies to Colored MNIST only, not to {info.name}")
    if download:
        root_dir = Path(data_dir if data_dir is not None else os.environ.get(DATA_ENV_VAR) or ".").expanduser()
        if not dataset_root(info, root_dir).is_dir():
            download_dataset(info.name, root_dir)
    root = dataset_root(info, resolve_data_dir(info, data_dir))
    listings = index_dataset(info, root, use_cache=use_cache)
    environments = []
    for env_name, env_dir in zip(info.env_names, info.env_dirs):
        listing = listings[env_dir]
        files: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(listing.classes):
            files.extend(f"{name}/{file}" for file in listing.files[name])
            labels.extend([label] * len(listing.files[name]))
        environments.append(FileEnvironment(env_name, str(root / env_dir), files, torch.tensor(labels, dtype=torch.long), listing.classes))
    return MultiDomainDataset(
        info.name, environments, (3, 224, 224), len(environments[0].classes), f"{info.name} image folders at {root}",
        n_steps=info.n_steps, checkpoint_freq=info.checkpoint_freq, info={"classes": environments[0].classes},
    )


def _register(info: ImageDatasetInfo) -> None:
    def build(
        data_dir: str | None = None, download: bool = False, seed: int = 0, label_noise: float | None = None
    ) -> MultiDomainDataset:
        return load_image_dataset(info, data_dir, download, seed, label_noise)

    build.__doc__ = f"DomainBed's {info.name}: environments {', '.join(info.env_names)} from {info.directory}/."
    register_dataset(info.name, info.env_names)(build)


for _info in IMAGE_DATASETS.values():
    _register(_info)


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
