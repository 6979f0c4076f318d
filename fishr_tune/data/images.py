"""DomainBed's image datasets (VLCS, PACS, OfficeHome, TerraIncognita, DomainNet) read from DomainBed's folders.

Layout, as DomainBed's download script leaves it: ``DATA_DIR/<dataset folder>/<environment folder>/<class>/<image>``.
Environments are the environment folders in sorted order and labels the class folders in sorted order (as
torchvision's ImageFolder), so a DomainBed data directory works as it is and gives the same in/out splits.
Unlike DomainBed, a layout that would silently shift labels or environments (a class folder missing from one
environment, an extra environment folder) is refused with an error that names the folder.

The table of datasets is data/catalog.py, the layout checks data/layout.py, the listing cache data/image_index.py,
the transforms data/transforms.py and the miniature writer data/synthetic.py; this module loads and registers.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fishr_tune.data.base import FileEnvironment, MultiDomainDataset, register_dataset
from fishr_tune.data.catalog import IMAGE_DATASETS, ImageDatasetInfo, dataset_root, layout_hint
from fishr_tune.data.download import download_dataset
from fishr_tune.data.image_index import index_dataset
from fishr_tune.data.sources import DATA_ENV_VAR
from fishr_tune.errors import ConfigError


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


