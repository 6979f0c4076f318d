"""The shipped image-dataset search spaces validate, and use DomainBed's image settings and distributions."""

from __future__ import annotations

from pathlib import Path

import pytest

from fishr_tune.data import DATASET_ENVIRONMENTS
from fishr_tune.data.catalog import IMAGE_DATASETS
from fishr_tune.hparams import hparam_space
from fishr_tune.space import Distribution
from fishr_tune.sweep.spec import load_spec
from fishr_tune.sweep.trial import RunSettings

SEARCH_SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
STEMS = {"VLCS": "vlcs", "PACS": "pacs", "OfficeHome": "office_home", "TerraIncognita": "terra_incognita",
         "DomainNet": "domain_net"}


@pytest.mark.parametrize("algorithm", ["Fishr", "ERM"])
@pytest.mark.parametrize("dataset", sorted(STEMS))
def test_image_search_spaces_validate(dataset: str, algorithm: str) -> None:
    spec = load_spec(SEARCH_SPACES / f"{STEMS[dataset]}_{algorithm.lower()}.yaml")
    assert spec.settings.dataset == dataset and spec.settings.algorithms == [algorithm]
    assert len(spec.groups) == len(DATASET_ENVIRONMENTS[dataset]) * 3
    assert spec.settings.steps == 5001
    assert spec.settings.checkpoint_freq == IMAGE_DATASETS[dataset].checkpoint_freq
    space = spec.spaces[algorithm]
    assert set(space) <= set(hparam_space(algorithm, dataset))
    assert space["featurizer"] == "resnet50" and space["resnet_weights"] == "imagenet"
    assert space["lr"] == Distribution("loguniform", 1e-5, 10**-3.5)
    assert space["batch_size"] == Distribution("logint", 8, 32 if dataset == "DomainNet" else 45)
    if algorithm == "Fishr":
        assert space["lambda"] == Distribution("loguniform", 10.0, 10000.0)
    assert spec.settings.resources.gpu == 1


def test_an_image_search_space_starts_on_a_miniature(local_ray, tmp_path, sqlite_uri) -> None:
    """The shipped PACS file, shrunk to CPU size (one group, 3 steps, ResNet-18 at 32 px on generated images),
    runs as a sweep: its structure is not only valid but usable."""
    import os

    import yaml

    from fishr_tune.data.synthetic import write_synthetic_dataset
    from fishr_tune.sweep.runner import run_sweep
    from fishr_tune.sweep.spec import build_spec

    write_synthetic_dataset("PACS", tmp_path / "data", images_per_class=3)
    values = yaml.safe_load((SEARCH_SPACES / "pacs_fishr.yaml").read_text())
    values.update(test_envs=[0], trial_seeds=[0], steps=3, checkpoint_freq=2, data_dir=str(tmp_path / "data"),
                  storage_path=str(tmp_path / "sweeps"), tracking_uri=sqlite_uri,
                  resources={"cpu": 1, "gpu": 0}, search={"algorithm": "random", "num_samples": 1, "seed": 0},
                  scheduler="none")
    values["hyperparameters"].update(featurizer="resnet18", resnet_weights="none", image_size=32, batch_size=4)
    values["hyperparameters"].pop("resnet_dropout")
    summary = run_sweep(build_spec(values, "pacs_fishr.yaml"), stream=open(os.devnull, "w"))
    assert (summary.finished, summary.failed) == (1, 0), summary.failures


@pytest.mark.parametrize("algorithm", ["Fishr", "ERM"])
@pytest.mark.parametrize("dataset", sorted(STEMS))
def test_every_image_search_space_starts_training(dataset: str, algorithm: str, tmp_path, monkeypatch) -> None:
    """Each shipped file's first suggestion, as a trial receives it, trains (in-process, no Ray) on a miniature
    of that dataset's folders; only the GPU-sized network settings are shrunk so it fits a CPU test."""
    import math

    from fishr_tune.data import get_dataset
    from fishr_tune.data.synthetic import write_synthetic_dataset
    from fishr_tune.sweep.runner import make_search
    from fishr_tune.sweep.trainable import trial_train_config
    from fishr_tune.sweep.trial import TrialSpec
    from fishr_tune.training import Trainer

    monkeypatch.setenv("FISHR_TUNE_CACHE", str(tmp_path / "cache"))
    spec = load_spec(SEARCH_SPACES / f"{STEMS[dataset]}_{algorithm.lower()}.yaml")
    searcher, _ = make_search(spec)
    config = searcher.suggest("trial_0")
    assert config["dataset"] == dataset and config["algorithm"] == algorithm
    assert set(hparam_space(algorithm, dataset)) >= set(config["hparams"]) >= {"lr", "batch_size"}
    config["hparams"].update(featurizer="resnet18", resnet_weights="none", image_size=32, batch_size=2)
    run = RunSettings(steps=2, checkpoint_freq=1, holdout_fraction=spec.settings.holdout_fraction,
                      label_noise=spec.settings.label_noise, device="cpu")
    train_config = trial_train_config(TrialSpec.from_config(config), run)
    write_synthetic_dataset(dataset, tmp_path / "data", classes=("a", "b"), images_per_class=3, size=(16, 16))
    data = get_dataset(dataset, data_dir=str(tmp_path / "data"), seed=config["trial_seed"])
    trainer = Trainer(train_config, data)
    try:
        records = list(trainer.records())
    finally:
        trainer.close()
    assert [r["step"] for r in records] == [0, 1]
    n_envs = len(DATASET_ENVIRONMENTS[dataset])
    assert all(math.isfinite(r["loss"]) and 0.0 <= r[f"env{n_envs - 1}_out_acc"] <= 1.0 for r in records)
