"""Algorithms behind a registry; every module in this package is imported, so a new algorithm is one new file."""

from __future__ import annotations

import importlib
import pkgutil

from fishr_tune.algorithms.base import ALGORITHMS, Algorithm, get_algorithm_class, register_algorithm

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ALGORITHMS", "Algorithm", "get_algorithm_class", "register_algorithm"]
