"""The file-backed input pipeline: per-domain infinite samplers, worker-independent batches, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fishr_tune.data import get_dataset, holdout_split
from fishr_tune.data.loaders import DomainBatchSampler, FileBackedSplits
from fishr_tune.data.synthetic import write_synthetic_dataset

HPARAMS = {"batch_size": 3, "image_size": 32, "data_augmentation": True}


@pytest.fixture
def vlcs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FISHR_TUNE_CACHE", str(tmp_path / "cache"))
    write_synthetic_dataset("VLCS", tmp_path, classes=("a", "b"), images_per_class=5, size=(40, 36))
    return get_dataset("VLCS", data_dir=str(tmp_path))


def splits(dataset, num_workers: int = 0, hparams=HPARAMS, seed: int = 0) -> FileBackedSplits:
    indices = {}
    for i, env in enumerate(dataset.environments):
        in_idx, out_idx = holdout_split(len(env), 0.2, 0, i)
        indices[i] = {"in": in_idx, "out": out_idx}
    return FileBackedSplits(dataset.environments, indices, [0, 2, 3], hparams, torch.device("cpu"), seed, num_workers)


def test_sampler_draws_each_domain_from_its_own_in_split() -> None:
    sampler = DomainBatchSampler([8, 3], batch_size=5, seed=0, augment=True)
    batch = sampler.batch(0)
    assert len(batch) == 10
    assert all(0 <= index < 8 for index, _ in batch[:5]) and all(8 <= index < 11 for index, _ in batch[5:])
    assert batch == DomainBatchSampler([8, 3], 5, 0, True).batch(0)
    assert batch != sampler.batch(1) and batch != DomainBatchSampler([8, 3], 5, 1, True).batch(0)
    assert all(seed == -1 for _, seed in DomainBatchSampler([8, 3], 5, 0, augment=False).batch(0))


def test_minibatches_one_per_training_domain_normalized(vlcs) -> None:
    data = splits(vlcs)
    batches = data.minibatches()
    assert len(batches) == 3
    for x, y in batches:
        assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
        assert x.min() < -0.5 and x.max() > 0.5  # normalized, not 0..255 or 0..1
    assert not torch.equal(batches[0][0], data.minibatches()[0][0])


def test_batches_do_not_depend_on_workers_and_resume_exactly(vlcs) -> None:
    reference = splits(vlcs, num_workers=0)
    expected = [reference.minibatches() for _ in range(4)]
    with_workers = splits(vlcs, num_workers=2)
    try:
        got = [with_workers.minibatches() for _ in range(2)]
        state = with_workers.state_dict()
        resumed = splits(vlcs, num_workers=0)
        resumed.load_state_dict(state)
        got += [resumed.minibatches() for _ in range(2)]
    finally:
        with_workers.close()
    for want_step, got_step in zip(expected, got):
        for (wx, wy), (gx, gy) in zip(want_step, got_step):
            assert torch.equal(wx, gx) and torch.equal(wy, gy)


def test_evaluation_covers_every_split_deterministically(vlcs) -> None:
    data = splits(vlcs)
    predict = lambda x: (x.mean(dim=(1, 2, 3)) > 0).long()  # noqa: E731
    first = data.evaluate(predict)
    assert set(first) == {0, 1, 2, 3} and all(set(v) == {"in", "out"} for v in first.values())
    assert first == data.evaluate(predict)
    always_zero = data.evaluate(lambda x: torch.zeros(len(x), dtype=torch.long))
    for i, env in enumerate(vlcs.environments):
        in_idx, out_idx = holdout_split(len(env), 0.2, 0, i)
        assert always_zero[i]["in"] == pytest.approx((env.y[in_idx] == 0).float().mean().item())
        assert always_zero[i]["out"] == pytest.approx((env.y[out_idx] == 0).float().mean().item())
    n_in = sum(data.split_size(i, "in") for i in range(4))
    n_out = sum(data.split_size(i, "out") for i in range(4))
    assert (n_in, n_out) == (4 * 8, 4 * 2)


def test_without_augmentation_training_batches_use_the_evaluation_transform(vlcs) -> None:
    data = splits(vlcs, hparams={**HPARAMS, "data_augmentation": False})
    x, y = data.minibatches()[0]
    index = data.batch_sampler.batch(0)[0][0]
    from fishr_tune.data.transforms import evaluation_transform, normalize

    expected = normalize(evaluation_transform(32)(data.train_data.load(index)).unsqueeze(0))[0]
    assert torch.equal(x[0], expected)
