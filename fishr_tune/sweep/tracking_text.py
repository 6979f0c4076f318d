"""The words and JSON a sweep's runs carry: run names, descriptions (Markdown), the saved view of the trials.

Pure functions of the spec and a trial's config, so the callback that journals them stays about when to write.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fishr_tune import records
from fishr_tune.data import DATASET_ENVIRONMENTS
from fishr_tune.space import Distribution
from fishr_tune.sweep.spec import SweepSpec
from fishr_tune.sweep.trial import Group, TrialSpec
from fishr_tune.tracking.mlflow_ui import saved_view


def config_digest(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def trial_run_name(group: Group, trial_id: str) -> str:
    """The whole Ray trial id: the sweep's summary and `fishr-tune analyze` name trials by it, so a reader finds
    their `Run` in MLflow's list as it is printed (a shortened id matched neither)."""
    envs = "-".join(str(e) for e in group.test_envs)
    return f"{group.algorithm} te{envs} ts{group.trial_seed} {trial_id}"


def flat_name(group: str) -> str:
    """A group key (`Fishr/te2/ts0`) as one metric-name segment: MLflow's UI turns `/` into chart sections."""
    return group.replace("/", "_")


def _format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_description(trial: TrialSpec, outcome: str, best: tuple[float, int] | None) -> str:
    """The run's description (Markdown): what was trained and how it ended."""
    names = DATASET_ENVIRONMENTS.get(trial.dataset, ())
    tests = ", ".join(f"{e} ({names[e]})" if e < len(names) else str(e) for e in trial.test_envs)
    searched = ", ".join(f"`{k}`={_format_value(v)}" for k, v in sorted(trial.hparams.items()))
    lines = [f"**{trial.algorithm}** on {trial.dataset}, test env {tests}, trial seed {trial.trial_seed} "
             f"(group `{trial.group}`).", "", f"**{outcome[0].upper()}{outcome[1:]}.**"]
    if best is not None:
        lines.append(f"Best training-domain validation accuracy {best[0]:.4f} at step {best[1]}.")
    if searched:
        lines += ["", f"Hyperparameters: {searched}."]
    return "\n".join(lines)


def space_kinds(spec: SweepSpec) -> dict[str, dict[str, str]]:
    """Per algorithm: each searched hyperparameter's distribution kind (loguniform, choice, ...)."""
    return {algorithm: {name: value.kind for name, value in space.items() if isinstance(value, Distribution)}
            for algorithm, space in spec.spaces.items()}


def sweep_description(spec: SweepSpec, outcome: str = "") -> str:
    """The experiment's description: the search space's own `description`, then what the sweep covers. The parent
    run's adds `outcome` (the selected trials) after the first, where MLflow's collapsed description still shows it."""
    settings = spec.settings
    scheduler = settings.scheduler
    stopping = (f"ASHA (grace period {scheduler.grace_period} steps, reduction factor {scheduler.reduction_factor:g})"
                if scheduler.type == "asha" else "no early stopping")
    text = (f"{settings.dataset}: {', '.join(settings.algorithms)}; test envs {settings.test_envs}; trial seeds "
            f"{settings.trial_seeds}; {settings.steps} steps, a checkpoint every {settings.checkpoint_freq}. "
            f"{settings.search.algorithm.upper()} search, {settings.search.num_samples} configurations per group, {stopping}. "
            f"Search space: `{spec.source}`. Rank trials by `best_val_acc` (training-domain validation; *Views* → "
            f"*{records.VIEW_NAME}*), never by a test environment's accuracy.")
    return "\n\n".join(part for part in (settings.description and settings.description.strip(), outcome, text) if part)


def trials_view(spec: SweepSpec, now_ms: int | None = None) -> str:
    """The saved view's tag value: trial runs only (a flat list, the parent hidden), sorted by best_val_acc, with
    the columns that answer "which configuration is best": validation, where it peaked, the searched hyperparameters."""
    searched = sorted({name for space in spec.spaces.values() for name, value in space.items() if isinstance(value, Distribution)})
    columns = ([f"metrics.`{name}`" for name in (records.BEST_VAL_ACC, records.BEST_VAL_STEP, records.VAL_ACC)]
               + [f"params.`{name}`" for name in searched] + ["tags.`group`", "tags.`status`"])
    state = {"searchFilter": f"tags.`{records.KIND_TAG}` = '{records.KIND_TRIAL}'",
             "orderByKey": f"metrics.`{records.BEST_VAL_ACC}`",
             "orderByAsc": False, "selectedColumns": columns, "runsHiddenMode": "SHOW_ALL"}
    return saved_view(records.VIEW_NAME, state, now_ms)
