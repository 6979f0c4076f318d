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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fishr_tune.data.base import FileEnvironment, MultiDomainDataset, register_dataset
from fishr_tune.data.sources import DATA_ENV_VAR
from fishr_tune.errors import ConfigError

# torchvision's ImageFolder extensions (compared case-insensitively, as ImageFolder does).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_ENV_VAR = "FISHR_TUNE_CACHE"
INDEX_VERSION = 1
MIN_IMAGE_SIZE = 32  # ResNets downsample 32x: below this the feature map is empty


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


@dataclass
class EnvironmentListing:
    """One environment folder: its classes (sorted) and each class's image file names (sorted)."""

    folder: str
    classes: list[str]
    files: dict[str, list[str]]

    @property
    def n_images(self) -> int:
        return sum(len(names) for names in self.files.values())


# ---------------------------------------------------------------------------------------------------------------
# Listing and checking the folders


def is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def dataset_root(info: ImageDatasetInfo, data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir).expanduser() / info.directory


def layout_hint(info: ImageDatasetInfo, root: Path) -> str:
    return f"DomainBed's layout {root}/{{{','.join(info.env_dirs)}}}/<class>/<image>"


def list_environment(env_dir: Path) -> EnvironmentListing:
    """Class folders and their images; a class without images or an image outside a class folder is an error."""
    if not env_dir.is_dir():
        raise ConfigError(f"environment folder {env_dir} does not exist")
    classes: list[str] = []
    for entry in sorted(os.scandir(env_dir), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            classes.append(entry.name)
        elif is_image(entry.name):
            raise ConfigError(
                f"stray image {entry.name!r} directly in environment folder {env_dir}: images belong in a class "
                f"folder ({env_dir}/<class>/<image>)"
            )
    if not classes:
        raise ConfigError(f"environment folder {env_dir} is empty: expected one folder per class, with the images inside")
    files: dict[str, list[str]] = {}
    for name in classes:
        class_dir = env_dir / name
        images = []
        for entry in os.scandir(class_dir):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                raise ConfigError(f"class folder {class_dir} holds a folder {entry.name!r}: expected only image files")
            if is_image(entry.name):
                images.append(entry.name)
        if not images:
            raise ConfigError(f"class folder {class_dir} holds no images (expected files ending in {', '.join(IMAGE_EXTENSIONS)})")
        files[name] = sorted(images)
    return EnvironmentListing(str(env_dir), classes, files)


def check_environment_folders(info: ImageDatasetInfo, root: Path) -> None:
    """Every DomainBed environment folder is there, and no other: DomainBed takes every folder as an environment."""
    if not root.is_dir():
        raise ConfigError(
            f"{info.name}: {root} does not exist; expected {layout_hint(info, root)}. Fetch it with "
            f"`fishr-tune data download {info.name} --data-dir {root.parent}`"
        )
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    missing = [d for d in info.env_dirs if d not in folders]
    if missing:
        raise ConfigError(
            f"{info.name}: environment folder(s) {', '.join(repr(m) for m in missing)} missing from {root}; "
            f"expected {layout_hint(info, root)}"
        )
    extra = [d for d in folders if d not in info.env_dirs]
    if extra:
        raise ConfigError(
            f"{info.name}: unexpected folder {root / extra[0]}: the environments are {', '.join(info.env_dirs)} "
            "(DomainBed takes every folder as an environment, so an extra one would shift the environment indices)"
        )


def check_same_classes(listings: list[EnvironmentListing]) -> None:
    """Labels are positions in the sorted class list: every environment must have the same classes."""
    reference = listings[0]
    for listing in listings[1:]:
        if listing.classes == reference.classes:
            continue
        missing = sorted(set(reference.classes) - set(listing.classes))
        if missing:
            raise ConfigError(
                f"class folder(s) {', '.join(repr(m) for m in missing)} missing from environment folder {listing.folder} "
                f"(present in {reference.folder}); every environment needs the same class folders"
            )
        extra = sorted(set(listing.classes) - set(reference.classes))
        raise ConfigError(
            f"class folder(s) {', '.join(repr(m) for m in extra)} in environment folder {listing.folder} are missing "
            f"from {reference.folder}; every environment needs the same class folders"
        )


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
        from fishr_tune.data.download import download_dataset

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
