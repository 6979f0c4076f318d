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
import pandas as pd  # noqa: E402

from fishr_tune.analysis.selection import GROUP, env_count, select, training_domain_scores  # noqa: E402
from fishr_tune.analysis.table import RUN, varying_hparams  # noqa: E402
from fishr_tune.errors import ConfigError  # noqa: E402


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


# How a hyperparameter's axis is drawn, from the distribution it was searched with (a sweep's `fishr_tune.space`
# tag or the registry's): categories for choices, a log axis for log-distributed values, a linear one otherwise.
CATEGORICAL, LOG, LINEAR = "categorical", "log", "linear"
SELECTED_COLOR = "#d62728"


def percent_decimals(locs: Sequence[float]) -> int:
    """Decimals that accuracy ticks (fractions shown as %) need for their spacing: 9.8%, 9.9%, 10.0%.
    matplotlib's PercentFormatter picks them from the axis range and printed 9.800%, 9.900% on a narrow one."""
    steps = [abs(b - a) for a, b in zip(locs, locs[1:]) if b != a]
    return max(0, math.ceil(-math.log10(min(steps) * 100) - 1e-9)) if steps else 0


def _percent(axis: Any, which: str) -> None:
    from matplotlib.ticker import Formatter

    class PercentTicks(Formatter):
        """The decimals come from the ticks being labelled (`Axis.locs` goes away in matplotlib 3.13)."""

        def format_ticks(self, values: Sequence[float]) -> list[str]:
            decimals = percent_decimals(list(values))
            return [f"{x * 100:.{decimals}f}%" for x in values]

        def __call__(self, x: float, pos: int | None = None) -> str:
            return f"{x * 100:.1f}%"  # a single value (the cursor readout): no spacing to go by

    (axis.xaxis if which == "x" else axis.yaxis).set_major_formatter(PercentTicks())


def validation_vs_test(
    curves: Mapping[str, Sequence[tuple[int, float, float]]], selected: tuple[str, int] | None, title: str,
    val_label: str, test_label: str, path: str | os.PathLike[str],
) -> Path:
    """Every run of one group as a path over its checkpoints, (validation, test) accuracy, on equal-aspect axes.

    `curves`: run -> [(step, val_acc, test_acc)] in step order; `selected`: (run, step) that the selection chose,
    drawn thick with its checkpoint starred. Equal aspect: a point of validation is as long as a point of test,
    so "does validation track test" reads as the slope of each path (45 degrees = tracks one for one).
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    steps = [s for points in curves.values() for s, _, _ in points]
    norm = Normalize(min(steps, default=0), max(max(steps, default=1), 1))
    cmap = colormaps["viridis"]
    figure, axis = plt.subplots(figsize=(7.5, 6.2))
    chosen = selected[0] if selected else None
    for run, points in sorted(curves.items(), key=lambda item: item[0] == chosen):
        xs, ys = [p[1] for p in points], [p[2] for p in points]
        mine = run == chosen
        axis.plot(xs, ys, color=SELECTED_COLOR if mine else "0.55", linewidth=2.4 if mine else 1.0,
                  alpha=1.0 if mine else 0.7, zorder=3 if mine else 1,
                  label=f"selected run {run}" if mine else None)
        axis.scatter(xs, ys, c=[cmap(norm(p[0])) for p in points], s=30 if mine else 16, zorder=4 if mine else 2,
                     edgecolors="black" if mine else "none", linewidths=0.5)
    if selected is not None:
        point = next((p for p in curves.get(selected[0], []) if p[0] == selected[1]), None)
        if point is not None:
            axis.scatter([point[1]], [point[2]], marker="*", s=320, color=SELECTED_COLOR, edgecolors="black", zorder=5,
                         label=f"selected checkpoint (step {selected[1]}): val {point[1]:.1%}, test {point[2]:.1%}")
    axis.plot([], [], color="0.55", linewidth=1.0, label=f"other runs ({len(curves) - (1 if chosen in curves else 0)})")
    xs = [p[1] for points in curves.values() for p in points]
    ys = [p[2] for points in curves.values() for p in points]
    if xs:
        half = max(max(xs) - min(xs), max(ys) - min(ys), 0.02) / 2 * 1.1
        for setter, values in ((axis.set_xlim, xs), (axis.set_ylim, ys)):
            middle = (max(values) + min(values)) / 2
            setter(middle - half, middle + half)
    axis.set_aspect("equal", adjustable="box")
    _percent(axis, "x")
    _percent(axis, "y")
    axis.set_xlabel(val_label)
    axis.set_ylabel(test_label)
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    figure.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axis, label="checkpoint step", shrink=0.8)
    return _save(figure, path)


def axis_kind(values: Sequence[Any], distribution: str | None = None) -> str:
    """categorical for choices (and anything not a number), log for log-distributed positive values, else linear.

    Without a known distribution: numbers spanning more than two decades get a log axis.
    """
    numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if distribution == "choice" or len(numeric) < len(values):
        return CATEGORICAL
    finite = [float(v) for v in numeric if math.isfinite(float(v))]
    positive = bool(finite) and min(finite) > 0
    if distribution in ("loguniform", "logint"):
        return LOG if positive else LINEAR
    if distribution is None and positive and max(finite) / min(finite) > 100.0:
        return LOG
    return LINEAR


def _tick_text(value: float) -> str:
    """Plain numbers a reader compares at a glance: 0.0005, 0.001, 80, 1,000 (no 1e+03, no repeated labels)."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2g}" if value != 0 else "0"


def accuracy_vs_hparams(
    values: Mapping[str, Sequence[Any]], val_acc: Sequence[float], test_acc: Sequence[float], title: str,
    path: str | os.PathLike[str], distributions: Mapping[str, str] | None = None,
    selected: Sequence[bool] | None = None, val_label: str = "validation accuracy", test_label: str = "test accuracy",
) -> Path:
    """One column per hyperparameter, validation on top and test below (each on its own y range, so differences
    between runs stay visible): each run at its selected checkpoint, the selected runs starred."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    names = list(values)
    distributions = distributions or {}
    chosen = list(selected) if selected is not None else [False] * len(val_acc)
    figure, axes = plt.subplots(2, len(names), figsize=(max(4.6 * len(names), 6.0), 7.0), squeeze=False)
    for column, name in enumerate(names):
        raw = list(values[name])
        kind = axis_kind(raw, distributions.get(name))
        if kind == CATEGORICAL:
            labels = sorted({json.dumps(x, default=str) for x in raw}, key=lambda t: (not _is_number(t), _number(t), t))
            slots = [labels.index(json.dumps(x, default=str)) for x in raw]
            # spread runs that share a category, so none hides another
            seen: dict[int, int] = {}
            offsets = []
            for slot in slots:
                seen[slot] = seen.get(slot, 0) + 1
                offsets.append(seen[slot])
            xs = [slot + 0.08 * (offset - (seen[slot] + 1) / 2) for slot, offset in zip(slots, offsets)]
        else:
            xs = [float(x) for x in raw]
        for row, (accuracies, label) in enumerate(((val_acc, val_label), (test_acc, test_label))):
            axis = axes[row][column]
            plain = [i for i, c in enumerate(chosen) if not c]
            stars = [i for i, c in enumerate(chosen) if c]
            axis.scatter([xs[i] for i in plain], [accuracies[i] for i in plain], s=26, color="#1f77b4" if row == 0 else "#2ca02c",
                         label="run (its selected checkpoint)")
            if stars:
                axis.scatter([xs[i] for i in stars], [accuracies[i] for i in stars], marker="*", s=220, color=SELECTED_COLOR,
                             edgecolors="black", zorder=3, label="selected run")
            if kind == CATEGORICAL:
                axis.set_xticks(range(len(labels)), [json.loads(t) if not _is_number(t) else t for t in labels])
                axis.set_xlim(-0.6, len(labels) - 0.4)
            elif kind == LOG:
                axis.set_xscale("log")
                positive = [x for x in xs if x > 0]
                decades = math.log10(max(positive) / min(positive)) if positive else 0.0
                # under ~1.5 decades the 1-2-5 ticks leave one label or none: evenly spaced values instead
                axis.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=8) if decades > 1.5
                                             else MaxNLocator(4))
                axis.xaxis.set_minor_formatter(NullFormatter())
                axis.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _tick_text(v)))
            else:
                axis.xaxis.set_major_locator(MaxNLocator(5))
                axis.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _tick_text(v)))
            axis.tick_params(axis="x", labelrotation=30, labelsize=8)
            _percent(axis, "y")
            axis.set_ylabel(label, fontsize=9)
            axis.set_xlabel(f"{name} ({kind} axis)" if row == 1 else "", fontsize=9)
            axis.grid(alpha=0.3)
            if column == 0:
                axis.legend(fontsize=7, loc="best")
        axes[0][column].set_title(name, fontsize=10)
    figure.suptitle(title, fontsize=11)
    return _save(figure, path)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(text: str) -> float:
    return float(text) if _is_number(text) else 0.0


# --- the figures analyze makes from the selection table ------------------------------------------------------


def run_points(prepared: pd.DataFrame) -> pd.DataFrame:
    """Per run with one test env: its best training-domain validation checkpoint (val_acc, test_acc) and its config."""
    scores = training_domain_scores(prepared)
    if scores.empty:
        return scores
    ordered = scores.sort_values([RUN, "val_acc", "step"], ascending=[True, False, True], kind="mergesort")
    return ordered.drop_duplicates(RUN).reset_index(drop=True)


def _env_label(dataset: str, env: int) -> str:
    from fishr_tune.data import DATASET_ENVIRONMENTS

    names = DATASET_ENVIRONMENTS.get(dataset, ())
    return f"{names[env]} (env {env})" if env < len(names) else f"env {env}"


def hparam_distributions(prepared: pd.DataFrame, spaces: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, dict[str, str]]:
    """Per algorithm: each hyperparameter's search distribution kind, from the sweep's space when known, else the registry's."""
    from fishr_tune.hparams import hparam_space

    out: dict[str, dict[str, str]] = {}
    for (dataset, algorithm), _ in prepared.groupby(["dataset", "algorithm"], sort=True):
        try:
            registry = {name: spec.dist.kind for name, spec in hparam_space(str(algorithm), str(dataset)).items()}
        except (ConfigError, KeyError, ValueError, AttributeError):
            registry = {}
        out[str(algorithm)] = {**registry, **dict((spaces or {}).get(str(algorithm), {}))}
    return out


def make_plots(prepared: pd.DataFrame, directory: str | Path,
               spaces: Mapping[str, Mapping[str, str]] | None = None) -> list[Path]:
    """Per group: validation vs test accuracy over every run's checkpoints, the training_domain selection marked;
    per (dataset, algorithm): accuracy against each varying hyperparameter, validation and test in separate rows."""
    directory = Path(directory)
    scores = training_domain_scores(prepared)
    points = run_points(prepared)
    written: list[Path] = []
    if points.empty:
        return written
    chosen = select(prepared, "training_domain")
    chosen_at = {tuple(r[c] for c in GROUP): (str(r[RUN]), int(r["step"])) for r in chosen.to_dict("records")}
    for group, part in scores.groupby(GROUP, sort=True):
        dataset, algorithm, test_env, trial_seed = group
        ordered = part.sort_values([RUN, "step"], kind="mergesort")
        curves = {str(run): list(zip(rows["step"].astype(int), rows["val_acc"].astype(float), rows["test_acc"].astype(float)))
                  for run, rows in ordered.groupby(RUN, sort=True)}
        training = sorted(set(range(env_count(part))) - {int(test_env)})
        val_label = "validation: mean out-split accuracy of " + ", ".join(_env_label(str(dataset), e) for e in training)
        name = f"val_vs_test_{dataset}_{algorithm}_te{test_env}_ts{trial_seed}.png"
        written.append(validation_vs_test(
            curves, chosen_at.get(tuple(group)),
            f"{dataset} {algorithm}, test env {_env_label(str(dataset), int(test_env))}, trial seed {trial_seed}: "
            f"{len(curves)} runs over their checkpoints", val_label,
            f"test: {_env_label(str(dataset), int(test_env))}, in split", directory / name,
        ))
    varying = varying_hparams(prepared)
    distributions = hparam_distributions(prepared, spaces)
    selected_runs = {run for run, _ in chosen_at.values()}
    for (dataset, algorithm), part in points.groupby(["dataset", "algorithm"], sort=True):
        names = varying.get((str(dataset), str(algorithm)), [])
        if not names:
            continue
        configs = [json.loads(c) for c in part["config"]]
        values = {n: [c.get(n) for c in configs] for n in names}
        tests = ", ".join(_env_label(str(dataset), int(e)) for e in sorted(part["test_env"].unique()))
        written.append(accuracy_vs_hparams(
            values, part["val_acc"].to_numpy(), part["test_acc"].to_numpy(),
            f"{dataset} {algorithm}: each run at its best training-domain validation checkpoint (test env {tests})",
            directory / f"hparams_{dataset}_{algorithm}.png", distributions.get(str(algorithm), {}),
            [str(run) in selected_runs for run in part[RUN]],
            "training-domain validation", f"test ({tests})",
        ))
    return written
