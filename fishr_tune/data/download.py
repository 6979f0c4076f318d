"""Fetching DomainBed's image datasets (for users who are online) and checking a data directory.

The sources are those of DomainBed's `domainbed/scripts/download.py`. DomainBed publishes no checksums for
them, so an archive is verified by what it unpacks to: a readable archive, the layout check that training uses,
and the class and image counts compared with DomainBed's published sizes (`fishr-tune data check` shows them).
The sha256 of every archive fetched is written to `<dataset folder>/download.json`, so two machines can tell
whether they hold the same data, and to `<data dir>/.fishr-tune-downloads.json`, which a later download of the same
archive into that directory must match; a `Source.sha256`, where a mirror publishes one, is enforced. Every source is
fetched over https, and names read from downloaded content (archive members, TerraIncognita's annotation file
names, DomainNet's duplicates list) must stay inside the dataset's folder.
A failed download leaves nothing behind: the archives it fetched and whatever it had unpacked are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fishr_tune.data.catalog import IMAGE_DATASETS, ImageDatasetInfo, dataset_root
from fishr_tune.data.layout import EnvironmentListing, check_same_classes, list_environment
from fishr_tune.errors import ConfigError, unknown_name_error
from fishr_tune.files import write_text_atomically

Fetch = Callable[[str, Path], None]
TIMEOUT_S = 60
CHUNK = 1 << 20
DOMAIN_NET_DUPLICATES_URL = (
    "https://raw.githubusercontent.com/facebookresearch/DomainBed/main/domainbed/misc/domain_net_duplicates.txt"
)
# Per data directory: the sha256 of every archive downloaded into it, compared when it is downloaded again.
KNOWN_CHECKSUMS_FILE = ".fishr-tune-downloads.json"
TERRA_LOCATIONS = ("38", "46", "100", "43")
TERRA_CATEGORIES = ("bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon", "squirrel")


def google_drive(file_id: str) -> str:
    """Drive's direct-download form (skips the page that asks to confirm large files)."""
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


@dataclass(frozen=True)
class Source:
    url: str
    archive: str  # file name it is saved as, in the folder it unpacks into
    sha256: str | None = None  # DomainBed publishes none; kept for mirrors that do


@dataclass(frozen=True)
class Recipe:
    sources: tuple[Source, ...]
    unpack_into: str  # "." (the data directory) or the dataset folder
    rename: tuple[str, str] | None = None  # (unpacked top folder, dataset folder)


RECIPES: dict[str, Recipe] = {
    "VLCS": Recipe((Source(google_drive("1skwblH1_okBwxWxmRsp9_qi15hyPpxg8"), "VLCS.tar.gz"),), "."),
    "PACS": Recipe((Source(google_drive("1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd"), "PACS.zip"),), ".", ("kfold", "PACS")),
    "OfficeHome": Recipe(
        (Source(google_drive("1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC"), "office_home.zip"),), ".",
        ("OfficeHomeDataset_10072016", "office_home"),
    ),
    "DomainNet": Recipe(
        tuple(
            Source(f"https://csr.bu.edu/ftp/visda/2019/multi-source/{path}", path.split("/")[-1])
            for path in ("groundtruth/clipart.zip", "infograph.zip", "groundtruth/painting.zip", "quickdraw.zip",
                         "real.zip", "sketch.zip")
        ),
        "dataset",
    ),
    "TerraIncognita": Recipe(
        (
            Source("https://lilablobssc.blob.core.windows.net/caltechcameratraps/eccv_18_all_images_sm.tar.gz",
                   "terra_incognita_images.tar.gz"),
            Source("https://lilablobssc.blob.core.windows.net/caltechcameratraps/labels/caltech_camera_traps.json.zip",
                   "caltech_camera_traps.json.zip"),
        ),
        "dataset",
    ),
}


def http_fetch(url: str, destination: Path) -> None:
    """Download `url` to `destination`; no network is a ConfigError that says so (exit 2, not a traceback)."""
    request = urllib.request.Request(url, headers={"User-Agent": "fishr-tune"})
    tmp = destination.with_suffix(destination.suffix + ".part")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, CHUNK)
    except urllib.error.HTTPError as error:
        tmp.unlink(missing_ok=True)
        raise ConfigError(
            f"cannot download {url}: the server answered HTTP {error.code} ({error.reason}); the source may have "
            "moved or hit its download quota. Try again later, or copy DomainBed's data folders into --data-dir"
        ) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        tmp.unlink(missing_ok=True)
        reason = getattr(error, "reason", error)
        raise ConfigError(
            f"cannot download {url} ({reason}): `fishr-tune data download` needs internet access. On an offline "
            "machine, copy DomainBed's data folders into --data-dir instead (`fishr-tune data check` verifies them)"
        ) from None
    os.replace(tmp, destination)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def extract(archive: Path, into: Path) -> None:
    """Unpack a zip or tar(.gz), refusing members that would land outside `into`; a broken archive is a ConfigError."""
    try:
        unpack(archive, into.resolve())
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        raise ConfigError(
            f"{archive}: not a readable {'zip' if archive.name.endswith('.zip') else 'tar'} archive ({error}); the "
            "download is incomplete or is an error page instead of the data"
        ) from None


def unpack(archive: Path, into: Path) -> None:
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not (into / member).resolve().is_relative_to(into):
                    raise ConfigError(f"{archive}: member {member!r} would unpack outside {into}")
            zf.extractall(into)
        return
    with tarfile.open(archive) as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(into, filter="data")
        else:  # Python without extraction filters: check the paths ourselves
            for entry in tf.getmembers():
                if not (into / entry.name).resolve().is_relative_to(into):
                    raise ConfigError(f"{archive}: member {entry.name!r} would unpack outside {into}")
            tf.extractall(into)


def inside(base: Path, relative: object, what: str) -> Path:
    """`base / relative`, refused when a name taken from downloaded content points outside `base`."""
    text = relative if isinstance(relative, str) else ""
    base = base.resolve()
    target = (base / text).resolve()
    if not text.strip() or Path(text).is_absolute() or target == base or not target.is_relative_to(base):
        shown = str(relative)[:200]
        raise ConfigError(f"{what}: {shown!r} points outside {base}; the downloaded data is refused")
    return target


def organize_terra_incognita(root: Path) -> None:
    """DomainBed's selection: locations 38, 46, 100, 43 and ten categories, as location_<id>/<category>/<file>."""
    annotations = next(root.glob("caltech_images_*.json"), None) or next(root.glob("*.json"), None)
    if annotations is None:
        raise ConfigError(f"TerraIncognita: no annotation JSON was unpacked into {root}")
    images_folder = root / "eccv_18_all_images_sm"
    data = json.loads(annotations.read_text(encoding="utf-8"))
    category_names = {item["id"]: item["name"] for item in data["categories"]}
    categories_of: dict[str, list[str]] = {}
    for annotation in data["annotations"]:
        categories_of.setdefault(annotation["image_id"], []).append(category_names[annotation["category_id"]])
    for image in data["images"]:
        location = str(image["location"])
        if location not in TERRA_LOCATIONS:
            continue
        for category in categories_of.get(image["id"], []):
            if category not in TERRA_CATEGORIES:
                continue
            folder = root / f"location_{location}" / category
            folder.mkdir(parents=True, exist_ok=True)
            name = image.get("file_name")
            source = inside(images_folder, name, f"{annotations.name}: image file_name")
            shutil.copyfile(source, inside(folder, name, f"{annotations.name}: image file_name"))
    shutil.rmtree(images_folder)
    annotations.unlink()


def remove_domain_net_duplicates(root: Path, fetch: Fetch) -> int:
    """DomainBed drops DomainNet's duplicate images (its misc/domain_net_duplicates.txt); returns how many."""
    listing = root / "domain_net_duplicates.txt"
    fetch(DOMAIN_NET_DUPLICATES_URL, listing)
    removed = 0
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        target = inside(root, line.strip(), f"{listing.name}:{number}")
        if target.is_file():
            target.unlink()
            removed += 1
    listing.unlink()
    return removed


def download_dataset(name: str, data_dir: str | os.PathLike[str], fetch: Fetch = http_fetch, keep_archives: bool = False) -> Path:
    """Fetch, verify (checksum where known), unpack and lay out `name` in DomainBed's folders; returns its folder."""
    if name not in IMAGE_DATASETS:
        raise unknown_name_error("dataset", name, list(IMAGE_DATASETS))
    info = IMAGE_DATASETS[name]
    data_dir = Path(data_dir).expanduser()
    root = dataset_root(info, data_dir)
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root} already exists and is not empty: remove it to download {name} again")
    recipe = RECIPES[name]
    existed_before = {entry.name for entry in data_dir.iterdir()} if data_dir.is_dir() else set()
    known = read_known_checksums(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        fetched = fetch_and_lay_out(name, recipe, data_dir, root, fetch, keep_archives, known)
    except BaseException:
        # Nothing half-done stays: the dataset folder (it was empty or absent) and whatever this call put
        # into the data directory (archives, unpacked top folders such as PACS's `kfold`).
        shutil.rmtree(root, ignore_errors=True)
        for entry in data_dir.iterdir():
            if entry.name not in existed_before:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        raise
    manifest = [{"url": source.url, "archive": source.archive, "bytes": size, "sha256": digest}
                for source, (size, digest) in fetched.items()]
    (root / "download.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    known.update({source.url: digest for source, (_, digest) in fetched.items()})
    write_text_atomically(data_dir / KNOWN_CHECKSUMS_FILE, json.dumps(known, indent=1, sort_keys=True) + "\n")
    return root


def read_known_checksums(data_dir: Path) -> dict[str, str]:
    """url -> sha256 of what was downloaded into this data directory before (DomainBed publishes no checksums)."""
    path = data_dir / KNOWN_CHECKSUMS_FILE
    if not path.exists():
        return {}
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: unreadable ({str(error)[:200]}); remove it to record the checksums again") from None
    if not isinstance(known, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in known.items()):
        raise ConfigError(f"{path}: expected a JSON object of url -> sha256; remove it to record the checksums again")
    return known


def fetch_and_lay_out(
    name: str, recipe: Recipe, data_dir: Path, root: Path, fetch: Fetch, keep_archives: bool,
    known: dict[str, str] | None = None,
) -> dict[Source, tuple[int, str]]:
    """Fetch and unpack every source, then lay the dataset out; returns each source's (bytes, sha256)."""
    unpack_into = data_dir if recipe.unpack_into == "." else root
    fetched: dict[Source, tuple[int, str]] = {}
    for source in recipe.sources:
        archive = unpack_into / source.archive
        fetch(source.url, archive)
        digest = sha256_of(archive)
        fetched[source] = (archive.stat().st_size, digest)
        if source.sha256 is not None and digest != source.sha256:
            raise ConfigError(f"{source.url}: checksum mismatch (expected sha256 {source.sha256}, got {digest}); "
                              "the download is corrupt")
        recorded = (known or {}).get(source.url)
        if source.sha256 is None and recorded is not None and digest != recorded:
            raise ConfigError(
                f"{source.url}: checksum mismatch (sha256 {digest}, but {recorded} when it was downloaded into "
                f"{data_dir} before, as {data_dir / KNOWN_CHECKSUMS_FILE} records); the download is corrupt or the "
                "source changed its data (remove that entry to accept the new archive)"
            )
        extract(archive, unpack_into)
        if not keep_archives:
            archive.unlink()
    if recipe.rename is not None:
        unpacked = data_dir / recipe.rename[0]
        if not unpacked.is_dir():
            raise ConfigError(f"{name}: the archive did not unpack to {unpacked} as DomainBed expects")
        root.rmdir()
        os.replace(unpacked, root)
    if name == "TerraIncognita":
        organize_terra_incognita(root)
    if name == "DomainNet":
        remove_domain_net_duplicates(root, fetch)
    return fetched


# ---------------------------------------------------------------------------------------------------------------
# Checking a data directory


@dataclass
class DatasetReport:
    """What `data check` found for one dataset."""

    name: str
    folder: Path
    status: str  # complete, incomplete, differs, invalid, missing
    environments: dict[str, int] = field(default_factory=dict)  # environment name -> images found
    num_classes: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def images(self) -> int:
        return sum(self.environments.values())


def check_dataset(info: ImageDatasetInfo, data_dir: str | os.PathLike[str]) -> DatasetReport:
    """Present and loadable? Then compared with DomainBed's published class and image counts."""
    root = dataset_root(info, data_dir)
    report = DatasetReport(info.name, root, "missing")
    if not root.is_dir():
        return report
    listings: dict[str, EnvironmentListing] = {}
    for env_name, env_dir in zip(info.env_names, info.env_dirs):
        try:
            listings[env_name] = list_environment(root / env_dir)
        except ConfigError as error:
            report.problems.append(str(error))
    extra = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".") and e.name not in info.env_dirs)
    report.problems += [f"unexpected folder {root / name} (not one of {', '.join(info.env_dirs)})" for name in extra]
    if listings:
        try:
            check_same_classes(list(listings.values()))
        except ConfigError as error:
            report.problems.append(str(error))
    report.environments = {name: listing.n_images for name, listing in listings.items()}
    report.num_classes = max((len(listing.classes) for listing in listings.values()), default=None)
    if report.problems:
        report.status = "invalid"
        return report
    expected = info.images_per_env or ()
    short = (report.num_classes or 0) < info.num_classes or report.images < info.total_images or any(
        found < want for found, want in zip(report.environments.values(), expected)
    )
    if short:
        report.status = "incomplete"
        report.problems.append(
            f"{report.num_classes} of {info.num_classes} classes, {report.images:,} of {info.total_images:,} images"
        )
    elif report.num_classes != info.num_classes or report.images != info.total_images:
        report.status = "differs"
        report.problems.append(f"{report.num_classes} classes and {report.images:,} images; DomainBed's: "
                               f"{info.num_classes} and {info.total_images:,}")
    else:
        report.status = "complete"
    return report


def check_data_dir(data_dir: str | os.PathLike[str], names: list[str] | None = None) -> list[DatasetReport]:
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise ConfigError(f"--data-dir: {path} is not a directory")
    for name in names or []:
        if name not in IMAGE_DATASETS:
            raise unknown_name_error("dataset", name, list(IMAGE_DATASETS))
    return [check_dataset(IMAGE_DATASETS[name], path) for name in (names or list(IMAGE_DATASETS))]

