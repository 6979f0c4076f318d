"""DomainBed's image datasets on generated miniatures of their folder layouts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from fishr_tune.data import DATASET_ENVIRONMENTS, get_dataset, holdout_split, image_index
from fishr_tune.data.catalog import IMAGE_DATASETS
from fishr_tune.data.synthetic import write_synthetic_dataset
from fishr_tune.data.transforms import IMAGENET_MEAN, IMAGENET_STD, evaluation_transform, normalize, training_transform
from fishr_tune.errors import ConfigError

# Created in this (unsorted) order: labels must follow the sorted order, as torchvision's ImageFolder.
CLASSES = ("zebra", "Mango", "apple")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FISHR_TUNE_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("name", sorted(IMAGE_DATASETS))
def test_environments_and_classes_follow_domainbed(name: str, tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    info = IMAGE_DATASETS[name]
    counts = [3 + i for i in range(len(info.env_dirs))]
    write_synthetic_dataset(name, tmp_path, classes=CLASSES, images_per_class=counts, size=(12, 10))
    dataset = get_dataset(name, data_dir=str(tmp_path))
    assert dataset.file_backed
    assert dataset.env_names == list(DATASET_ENVIRONMENTS[name]) == list(info.env_names)
    assert (dataset.n_steps, dataset.checkpoint_freq) == (5001, 1000 if name == "DomainNet" else 300)
    assert dataset.num_classes == 3
    for env, env_dir, count in zip(dataset.environments, info.env_dirs, counts):
        assert env.classes == ["Mango", "apple", "zebra"]
        assert len(env) == 3 * count
        reference = ImageFolder(str(tmp_path / info.directory / env_dir))
        assert [env.path(i) for i in range(len(env))] == [path for path, _ in reference.samples]
        assert env.y.tolist() == reference.targets


def test_domainbed_folder_names(tmp_path: Path) -> None:
    expected = {
        "VLCS": ("VLCS", ("Caltech101", "LabelMe", "SUN09", "VOC2007")),
        "PACS": ("PACS", ("art_painting", "cartoon", "photo", "sketch")),
        "OfficeHome": ("office_home", ("Art", "Clipart", "Product", "Real World")),
        "TerraIncognita": ("terra_incognita", ("location_100", "location_38", "location_43", "location_46")),
        "DomainNet": ("domain_net", ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")),
    }
    assert {k: (v.directory, v.env_dirs) for k, v in IMAGE_DATASETS.items()} == expected
    assert all(list(info.env_dirs) == sorted(info.env_dirs) for info in IMAGE_DATASETS.values())


def test_in_out_splits_are_domainbeds(tmp_path: Path) -> None:
    from fishr_tune.training import Trainer, make_config

    write_synthetic_dataset("PACS", tmp_path, classes=CLASSES, images_per_class=5, size=(12, 10))
    config = make_config(dict(dataset="PACS", test_envs=[0], data_dir=str(tmp_path), device="cpu", num_workers=0, trial_seed=3,
                              hparams={"featurizer": "resnet18", "resnet_weights": "none", "image_size": 32}), "test")
    trainer = Trainer(config)
    for i, env in enumerate(trainer.dataset.environments):
        in_idx, out_idx = holdout_split(len(env), 0.2, 3, i)
        assert trainer.split_size(i, "in") == len(in_idx) == 12 and trainer.split_size(i, "out") == len(out_idx) == 3
        assert sorted(in_idx.tolist() + out_idx.tolist()) == list(range(15))
    other = holdout_split(15, 0.2, 4, 0)[1]
    assert not torch.equal(holdout_split(15, 0.2, 3, 0)[1], other)


def test_training_transform_is_random_and_evaluation_deterministic() -> None:
    image = Image.fromarray(torch.randint(0, 256, (60, 80, 3), dtype=torch.uint8).numpy())
    train = training_transform(48)
    torch.manual_seed(0)
    first = train(image)
    second = train(image)
    torch.manual_seed(0)
    again = train(image)
    assert first.shape == (3, 48, 48) and first.dtype == torch.uint8
    assert not torch.equal(first, second) and torch.equal(first, again)
    evaluate = evaluation_transform(48)
    assert torch.equal(evaluate(image), evaluate(image)) and evaluate(image).shape == (3, 48, 48)
    with pytest.raises(ConfigError, match="image_size"):
        training_transform(16)


def test_normalize_on_device_equals_totensor_then_normalize() -> None:
    from torchvision import transforms

    image = Image.fromarray(torch.randint(0, 256, (20, 30, 3), dtype=torch.uint8).numpy())
    reference = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)(transforms.ToTensor()(image))
    assert torch.equal(normalize(transforms.PILToTensor()(image).unsqueeze(0))[0], reference)


def pacs(tmp_path: Path) -> Path:
    return write_synthetic_dataset("PACS", tmp_path, classes=CLASSES, images_per_class=2, size=(8, 8))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda root: _rmtree(root / "cartoon" / "apple"), r"class folder\(s\) 'apple' missing from environment folder .*cartoon"),
        (lambda root: [_rmtree(p) for p in (root / "photo").iterdir()], r"environment folder .*photo is empty"),
        (lambda root: (root / "sketch" / "stray.jpg").write_bytes(b"x"),
         r"stray image 'stray.jpg' directly in environment folder .*sketch"),
        (lambda root: _rmtree(root / "art_painting"), r"environment folder\(s\) 'art_painting' missing from .*PACS"),
        (lambda root: (root / "extra").mkdir(), r"unexpected folder .*PACS/extra"),
        (lambda root: [p.unlink() for p in (root / "photo" / "zebra").iterdir()], r"class folder .*photo/zebra holds no images"),
    ],
    ids=["missing-class", "empty-environment", "stray-image", "missing-environment", "extra-folder", "empty-class"],
)
def test_wrong_layouts_name_the_folder(tmp_path: Path, breakage, message: str) -> None:
    breakage(pacs(tmp_path))
    with pytest.raises(ConfigError, match=message):
        get_dataset("PACS", data_dir=str(tmp_path))


def test_missing_data_dir_and_dataset_folder_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pass --data-dir DIR"):
        get_dataset("VLCS")
    with pytest.raises(ConfigError, match=r"VLCS does not exist.*fishr-tune data download VLCS"):
        get_dataset("VLCS", data_dir=str(tmp_path))
    pacs(tmp_path)
    with pytest.raises(ConfigError, match="--label-noise applies to Colored MNIST only"):
        get_dataset("PACS", data_dir=str(tmp_path), label_noise=0.1)


def test_non_image_files_are_ignored_like_imagefolder(tmp_path: Path) -> None:
    root = pacs(tmp_path)
    (root / "ImageInfo.csv").write_text("a,b")  # office_home ships files like this at its top level
    (root / "photo" / "notes.txt").write_text("x")
    (root / "photo" / "apple" / ".DS_Store").write_bytes(b"x")
    (root / "photo" / "apple" / "list.txt").write_text("x")
    dataset = get_dataset("PACS", data_dir=str(tmp_path))
    assert [len(env) for env in dataset.environments] == [6, 6, 6, 6]


def test_file_index_is_cached_until_a_folder_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = pacs(tmp_path)
    scans = []
    real = image_index.list_environment
    monkeypatch.setattr(image_index, "list_environment", lambda path: scans.append(path) or real(path))
    first = get_dataset("PACS", data_dir=str(tmp_path))
    assert len(scans) == 4
    second = get_dataset("PACS", data_dir=str(tmp_path))
    assert len(scans) == 4  # served from the index
    assert [env.files for env in second.environments] == [env.files for env in first.environments]
    new_file = root / "photo" / "apple" / "img_9999.jpg"
    Image.new("RGB", (8, 8)).save(new_file)
    stamp = time.time_ns() + 10**9
    os.utime(root / "photo" / "apple", ns=(stamp, stamp))  # mtime resolution of some file systems is coarse
    third = get_dataset("PACS", data_dir=str(tmp_path))
    assert len(scans) == 8
    assert len(third.environments[2]) == 7


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def test_a_tampered_listing_cache_is_ignored_and_the_folders_listed_again(tmp_path, monkeypatch) -> None:
    import json

    monkeypatch.setenv("FISHR_TUNE_CACHE", str(tmp_path / "cache"))
    root = write_synthetic_dataset("PACS", tmp_path / "data", classes=("a",), images_per_class=1, size=(8, 8))
    listings = image_index.scan_dataset(IMAGE_DATASETS["PACS"], root)
    image_index.write_index(root, listings)
    assert image_index.read_index(root) == listings
    cache = image_index.index_file(root)
    data = json.loads(cache.read_text())
    data["environments"]["art_painting"]["files"]["a"] = ["../../../../../etc/hostname"]
    cache.write_text(json.dumps(data))
    assert image_index.read_index(root) is None
