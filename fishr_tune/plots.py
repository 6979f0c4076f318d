"""PNG plots where people would rather look than read: accuracy curves per trial, and sweep overviews."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def accuracy_curves(
    points: Sequence[Mapping[str, Any]], test_envs: Sequence[int], env_names: Sequence[str], title: str,
    path: str | os.PathLike[str],
) -> Path:
    """Accuracy of every environment against steps: training environments solid, test environments dashed."""
    steps = [int(p["step"]) for p in points]
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for env, name in enumerate(env_names):
        test = env in test_envs
        for split, marker in (("in", "o"), ("out", "s")):
            values = [p.get(f"env{env}_{split}_acc") for p in points]
            if all(v is None for v in values):
                continue
            axis.plot(steps, [math.nan if v is None else v for v in values], linestyle="--" if test else "-",
                      marker=marker, markersize=3, label=f"env{env} {name!r} {split}{' (test)' if test else ''}")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("accuracy")
    axis.set_ylim(0, 1)
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _save(figure: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def validation_vs_test(
    val_acc: Sequence[float], test_acc: Sequence[float], steps: Sequence[int], title: str, path: str | os.PathLike[str],
) -> Path:
    """One point per run (its selected checkpoint): how well does validation accuracy predict test accuracy?"""
    figure, axis = plt.subplots(figsize=(5.5, 4.5))
    scatter = axis.scatter(val_acc, test_acc, c=steps, cmap="viridis", s=24)
    figure.colorbar(scatter, ax=axis, label="checkpoint step")
    axis.set_xlabel("training-domain validation accuracy")
    axis.set_ylabel("test-domain accuracy (in split)")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    return _save(figure, path)


def wants_log_axis(name: str, values: Sequence[Any]) -> bool:
    """lambda always; any positive numeric hyperparameter whose values span more than two decades."""
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
    if not numbers or min(numbers) <= 0:
        return False
    return name == "lambda" or max(numbers) / min(numbers) > 100.0


def accuracy_vs_hparams(
    values: Mapping[str, Sequence[Any]], val_acc: Sequence[float], test_acc: Sequence[float], title: str,
    path: str | os.PathLike[str],
) -> Path:
    """One panel per hyperparameter: each run's validation (and test) accuracy against its value."""
    names = list(values)
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names):
        xs = list(values[name])
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        if not numeric:
            labels = sorted({json.dumps(x, default=str) for x in xs})
            xs = [labels.index(json.dumps(x, default=str)) for x in xs]
            axis.set_xticks(range(len(labels)), labels, fontsize=7)
        axis.scatter(xs, val_acc, s=18, label="validation")
        axis.scatter(xs, test_acc, s=18, marker="x", label="test")
        if numeric and wants_log_axis(name, xs):
            axis.set_xscale("log")
        axis.set_xlabel(name)
        axis.set_ylabel("accuracy")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(names):]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)
