"""The shipped image-dataset search spaces validate, and use DomainBed's image settings and distributions."""

from __future__ import annotations

from pathlib import Path

import pytest

from fishr_tune.data import DATASET_ENVIRONMENTS
from fishr_tune.data.images import IMAGE_DATASETS
from fishr_tune.hparams import hparam_space
from fishr_tune.sweep.spec import Distribution, load_spec

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
