"""Every global RNG a run touches, saved in and restored from checkpoints so a resumed run continues bit-for-bit."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Every global RNG, as tensors and plain Python values so the checkpoint loads with weights_only=True.

    numpy's legacy state includes a cached second Gaussian (has_gauss, cached_gaussian): np.random.beta with
    alpha > 1 draws normals, so without it Mixup would not resume exactly.
    """
    py_state = random.getstate()
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached_gaussian),
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of `rng_state`; checkpoints written before the Gaussian cache was saved restore it as empty."""
    torch.set_rng_state(state["torch"])
    np.random.set_state((
        "MT19937",
        state["numpy_keys"].numpy().astype(np.uint32),
        int(state["numpy_pos"]),
        int(state.get("numpy_has_gauss", 0)),
        float(state.get("numpy_cached_gaussian", 0.0)),
    ))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
