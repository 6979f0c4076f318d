"""`fishr-tune data download|check` and `train` on image folders: tables, and exit code 2 with the folder named."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from fishr_tune.cli import main
from fishr_tune.data.synthetic import write_synthetic_dataset


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FISHR_TUNE_CACHE", str(tmp_path / "cache"))


def test_check_prints_a_table_of_every_dataset(tmp_path: Path) -> None:
    write_synthetic_dataset("PACS", tmp_path, classes=("a", "b"), images_per_class=1, size=(8, 8))
    result = CliRunner().invoke(main, ["data", "check", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 3}
    assert set(rows) == {"VLCS", "PACS", "OfficeHome", "TerraIncognita", "DomainNet"}
    assert "incomplete" in rows["PACS"] and "A 2, C 2, P 2, S 2" in rows["PACS"] and "8/9,991" in rows["PACS"]
    assert "missing" in rows["DomainNet"]
    assert "PACS: 2 of 7 classes, 8 of 9,991 images" in result.output


def test_check_of_a_missing_directory_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["data", "check", "--data-dir", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "is not a directory" in result.output


def test_download_offline_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    result = CliRunner().invoke(main, ["data", "download", "PACS", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "needs internet access" in result.output and "Traceback" not in result.output
    unknown = CliRunner().invoke(main, ["data", "download", "MNIST", "--data-dir", str(tmp_path)])
    assert unknown.exit_code == 2 and "unknown dataset 'MNIST'" in unknown.output


def test_train_on_a_broken_layout_exits_2_naming_the_folder(tmp_path: Path) -> None:
    root = write_synthetic_dataset("PACS", tmp_path, classes=("a", "b"), images_per_class=1, size=(8, 8))
    for image in (root / "cartoon" / "b").iterdir():
        image.unlink()
    (root / "cartoon" / "b").rmdir()
    result = CliRunner().invoke(main, ["train", "--dataset", "PACS", "--test-envs", "0", "--data-dir", str(tmp_path),
                                       "--device", "cpu", "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert f"missing from environment folder {root / 'cartoon'}" in result.output


def test_train_on_image_folders_end_to_end(tmp_path: Path) -> None:
    write_synthetic_dataset("VLCS", tmp_path, classes=("a", "b"), images_per_class=3, size=(40, 36))
    result = CliRunner().invoke(main, [
        "train", "--dataset", "VLCS", "--algorithm", "ERM", "--test-envs", "3", "--data-dir", str(tmp_path),
        "--device", "cpu", "--num-workers", "0", "--steps", "2", "--checkpoint-freq", "1", "--output-dir", str(tmp_path / "run"),
        "--hparams", '{"featurizer": "resnet18", "image_size": 32, "batch_size": 2, "resnet_weights": "none"}',
    ])
    assert result.exit_code == 0, result.output
    assert f"Data: VLCS from VLCS image folders at {tmp_path / 'VLCS'}" in result.output
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "num_workers: 0" in saved and "image_size: 32" in saved
