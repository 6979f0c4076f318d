"""Shared fixtures: the genuine full MNIST when present (skip cleanly otherwise), and isolation of HOME."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_mnist_available() -> bool:
    raw = SHARED_DATA / "MNIST" / "raw"
    return all((raw / name).exists() for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"))


@pytest.fixture
def full_mnist_dir() -> Path:
    """Directory with the genuine MNIST (torchvision layout); tests that need it skip when it is absent."""
    if not shared_mnist_available():
        pytest.skip(f"full MNIST not found under {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their data source explicitly; a developer's $FISHR_TUNE_DATA must not leak in."""
    monkeypatch.delenv("FISHR_TUNE_DATA", raising=False)
