from __future__ import annotations

import pytest
import torch

from fishr_tune.data.sources import load_mnist
from fishr_tune.errors import ConfigError


def test_embedded_default_is_real_balanced_mnist() -> None:
    digits = load_mnist()
    assert "embedded" in digits.source
    assert digits.train_images.shape == (5000, 28, 28) and digits.train_images.dtype == torch.uint8
    assert torch.bincount(digits.train_labels).tolist() == [500] * 10
    # shuffled: the first 5/6 (the IRM training part) holds every class
    assert torch.bincount(digits.train_labels[:4166], minlength=10).min() > 350


def test_data_dir_wins_over_environment_variable(full_mnist_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FISHR_TUNE_DATA", str(tmp_path))
    digits = load_mnist(str(full_mnist_dir))
    assert str(full_mnist_dir) in digits.source
    assert len(digits.train_labels) == 60_000 and len(digits.test_labels) == 10_000
    assert torch.bincount(digits.train_labels).tolist()[:3] == [5923, 6742, 5958]


def test_environment_variable_is_used(full_mnist_dir, monkeypatch) -> None:
    monkeypatch.setenv("FISHR_TUNE_DATA", str(full_mnist_dir))
    assert len(load_mnist().train_labels) == 60_000


def test_missing_mnist_names_the_directory(tmp_path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path)):
        load_mnist(str(tmp_path))
    with pytest.raises(ConfigError, match="not a directory"):
        load_mnist(str(tmp_path / "nope"))


def test_embedded_digits_are_cached_parsed_and_a_bad_cache_is_parsed_again(tmp_path, monkeypatch) -> None:
    from fishr_tune.data import sources

    monkeypatch.setenv("FISHR_TUNE_CACHE", str(tmp_path))
    sources._embedded_arrays.cache_clear()
    parsed = sources._embedded_arrays()
    path = sources.embedded_cache_file()
    assert path.is_relative_to(tmp_path) and path.exists()
    sources._embedded_arrays.cache_clear()
    cached = sources._embedded_arrays()
    assert torch.equal(cached[0], parsed[0]) and torch.equal(cached[1], parsed[1])
    torch.save({"images": parsed[0][:10], "labels": parsed[1][:10]}, path)  # wrong shape: not trusted
    assert sources._read_embedded_cache(path) is None
    path.write_bytes(b"not a checkpoint")
    sources._embedded_arrays.cache_clear()
    again = sources._embedded_arrays()
    assert torch.equal(again[0], parsed[0]) and sources._read_embedded_cache(path) is not None
    sources._embedded_arrays.cache_clear()
