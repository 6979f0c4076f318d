"""Listing and checking DomainBed's folder layout: ``<dataset>/<environment>/<class>/<image>``, refused with an
error naming the folder when it would silently shift labels or environments."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fishr_tune.data.catalog import ImageDatasetInfo, layout_hint
from fishr_tune.errors import ConfigError

# torchvision's ImageFolder extensions (compared case-insensitively, as ImageFolder does).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class EnvironmentListing:
    """One environment folder: its classes (sorted) and each class's image file names (sorted)."""

    folder: str
    classes: list[str]
    files: dict[str, list[str]]

    @property
    def n_images(self) -> int:
        return sum(len(names) for names in self.files.values())


def is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


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
