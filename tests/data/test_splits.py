from __future__ import annotations

import pytest
import torch

from fishr_tune.data import holdout_split


def test_split_is_disjoint_complete_and_sized() -> None:
    in_idx, out_idx = holdout_split(1000, 0.2, trial_seed=0, env_index=1)
    assert len(out_idx) == 200 and len(in_idx) == 800
    assert set(in_idx.tolist()).isdisjoint(out_idx.tolist())
    assert sorted(torch.cat([in_idx, out_idx]).tolist()) == list(range(1000))


def test_split_is_reproducible_and_depends_on_trial_seed_and_env() -> None:
    first = holdout_split(500, 0.2, 3, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, holdout_split(500, 0.2, 3, 0)))
    assert not torch.equal(first[1], holdout_split(500, 0.2, 4, 0)[1])
    assert not torch.equal(first[1], holdout_split(500, 0.2, 3, 1)[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError):
        holdout_split(10, fraction, 0, 0)
