"""DomainBed's in/out split of each environment, seeded by (trial_seed, environment index)."""

from __future__ import annotations

import numpy as np
import torch

from fishr_tune.hparams import seed_hash


def holdout_split(n: int, holdout_fraction: float, trial_seed: int, env_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (in_split, out_split); `out` holds int(n * holdout_fraction) examples.

    Depends only on the trial seed and the environment, never on hyperparameters, so every configuration of a
    trial is trained and validated on the same examples (as DomainBed's `split_dataset`).
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    keys = np.arange(n)
    np.random.RandomState(seed_hash(trial_seed, env_index)).shuffle(keys)
    n_out = int(n * holdout_fraction)
    return torch.from_numpy(keys[n_out:].copy()), torch.from_numpy(keys[:n_out].copy())
