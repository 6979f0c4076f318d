"""The image datasets' listing cache: listing DomainNet's 586,575 files takes a while on network storage, so the
checked listing is kept as JSON (in ``$FISHR_TUNE_CACHE``, default ``~/.cache/fishr-tune/index``) and reused while
the modification times of the dataset, environment and class folders are unchanged (adding or removing an image
changes its folder's)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from fishr_tune.data.catalog import ImageDatasetInfo
from fishr_tune.data.layout import EnvironmentListing, check_environment_folders, check_same_classes, list_environment

CACHE_ENV_VAR = "FISHR_TUNE_CACHE"


INDEX_VERSION = 1


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
