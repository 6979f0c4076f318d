"""Training on file-backed image datasets: Fishr with a ResNet-18 at a small resolution on the CPU."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fishr_tune import networks, records
from fishr_tune.data.synthetic import write_synthetic_dataset
from fishr_tune.errors import ConfigError
from fishr_tune.training import TrainConfig, Trainer, make_config, run_training

SMALL = {"featurizer": "resnet18", "image_size": 32, "batch_size": 4}


@pytest.fixture(autouse=True)
def _one_thread_and_private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Small convolutions gain nothing from a second thread on a busy 2-core machine."""
    monkeypatch.setenv("FISHR_TUNE_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write_synthetic_dataset("PACS", tmp_path / "data", classes=("dog", "horse"), images_per_class=5, size=(40, 36))
    return tmp_path / "data"


def config(data_dir: Path, tmp_path: Path, **overrides) -> TrainConfig:
    values = dict(dataset="PACS", algorithm="Fishr", test_envs=[0], steps=20, checkpoint_freq=10, data_dir=str(data_dir),
                  device="cpu", num_workers=0, output_dir=str(tmp_path / "run"),
                  hparams={**SMALL, "resnet_weights": "none", "penalty_anneal_iters": 5})
    values.update(overrides)
    return make_config(values, "test")


def test_fishr_resnet18_runs_20_steps_with_records(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "no-weights"))
    hparams = {**SMALL, "penalty_anneal_iters": 5}  # resnet_weights 'auto' with an empty cache: warn, random init
    with pytest.warns(UserWarning, match="no ImageNet weights for resnet18"):
        produced = run_training(config(data_dir, tmp_path, hparams=hparams))
    assert [r["step"] for r in produced] == [0, 10, 19]
    last = produced[-1]
    assert last["hparams"]["featurizer"] == "resnet18" and last["hparams"]["image_size"] == 32
    assert last["args"]["data_source"].startswith("PACS image folders at")
    assert all(math.isfinite(r[key]) for r in produced for key in ("loss", "nll", "penalty"))
    assert produced[-1]["loss"] > produced[-1]["nll"]  # the penalty is on after step 5
    for i in range(4):
        for split in ("in", "out"):
            assert 0.0 <= last[f"env{i}_{split}_acc"] <= 1.0
    assert last["val_acc"] == pytest.approx((last["env1_out_acc"] + last["env2_out_acc"] + last["env3_out_acc"]) / 3)
    assert records.read(tmp_path / "run" / "results.jsonl") == produced


def test_resume_continues_exactly_with_file_backed_data(data_dir: Path, tmp_path: Path) -> None:
    cfg = config(data_dir, tmp_path, algorithm="ERM", steps=6, checkpoint_freq=3, hparams={**SMALL, "resnet_weights": "none"})
    reference = Trainer(cfg)
    expected = list(reference.records())
    cut = Trainer(cfg)
    stream = cut.records()
    next(stream)  # step 0
    for _ in range(2):
        cut.train_step()  # steps 1, 2: mid-interval, with running means in the checkpoint
    cut.save_checkpoint(tmp_path / "ckpt.pt")
    resumed = Trainer(cfg)
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    got = list(resumed.records())
    assert [r["step"] for r in got] == [3, 5]
    for want, have in zip(expected[1:], got):
        for key in ("loss", "env0_in_acc", "env1_out_acc", "env3_in_acc"):
            assert have[key] == want[key], key


def test_amp_is_refused_on_a_cpu_without_bf16(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(networks, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ConfigError, match="hyperparameter amp: 'bf16' cannot run here: this CPU .* has no native bfloat16"):
        Trainer(config(data_dir, tmp_path, hparams={**SMALL, "resnet_weights": "none", "amp": "bf16"}))
    with pytest.raises(ConfigError, match=r"hyperparameter 'amp' must be one of \['off', 'bf16'\]"):
        config(data_dir, tmp_path, hparams={**SMALL, "amp": "fp16"})


def test_explicit_weights_that_are_absent_are_an_error(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "no-weights"))
    with pytest.raises(ConfigError, match="resnet_weights: 'imagenet' asks for resnet18's ImageNet weights"):
        Trainer(config(data_dir, tmp_path, hparams={**SMALL, "resnet_weights": "imagenet"}))
    with pytest.raises(ConfigError, match="ResNet weights file /nowhere/r18.pth does not exist"):
        Trainer(config(data_dir, tmp_path, hparams={**SMALL, "resnet_weights": "/nowhere/r18.pth"}))
