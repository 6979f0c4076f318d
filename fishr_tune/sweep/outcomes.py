"""What a sweep's trials came to: each trial's outcome (finished, stopped early, failed, unfinished), the counts per
group and the summary the runner prints and writes. A leaf of the sweep package, read by the runner and by the
MLflow callback alike."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fishr_tune import records
from fishr_tune.sweep.spec import SweepSpec
from fishr_tune.sweep.trainable import STEPS_TRAINED
from fishr_tune.sweep.trial import FAILURE_KEY, GROUP_KEY

SUMMARY_FILE = "sweep_summary.json"


@dataclass
class GroupCounts:
    running: int = 0
    pending: int = 0
    finished: int = 0
    stopped_early: int = 0
    failed: int = 0
    unfinished: int = 0  # cut off by an interruption before Tune saw its end (continue with --resume)
    best_val_acc: float | None = None
    best_trial: str | None = None
    best_hparams: dict[str, Any] | None = None


@dataclass
class SweepSummary:
    name: str
    experiment_dir: str
    trials: int
    finished: int
    stopped_early: int
    failed: int
    unfinished: int
    steps_trained: int
    steps_without_early_stopping: int
    trial_compute_s: float
    wall_time_s: float
    groups: dict[str, GroupCounts] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    tracking_uri: str = ""
    mlflow_journal: str = ""
    mlflow_pending: int = 0
    mlflow_error: str | None = None
    mlflow_view: str = ""  # the saved view of the trials ranked by best_val_acc (tracking_text.trials_view)

    @property
    def interrupted(self) -> bool:
        return self.unfinished > 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def lines(self) -> list[str]:
        share = self.steps_trained / self.steps_without_early_stopping if self.steps_without_early_stopping else 0.0
        out = [
            f"Sweep {self.name}: {self.trials} trials: {self.finished} finished, {self.stopped_early} stopped early, "
            f"{self.failed} failed" + (f", {self.unfinished} unfinished (continue with --resume)" if self.unfinished else ""),
            f"Optimizer steps trained: {self.steps_trained:,} of {self.steps_without_early_stopping:,} without early "
            f"stopping ({share:.0%}); wall time {self.wall_time_s:.1f} s",
        ]
        for key, counts in self.groups.items():
            best = "-" if counts.best_val_acc is None else f"{counts.best_val_acc:.4f} ({counts.best_trial})"
            out.append(f"  {key}: best val_acc {best}")
        for trial_id, reason in self.failures.items():
            out.append(f"  failed {trial_id}: {reason}")
        out.append(f"Results: {self.experiment_dir} (summary in {SUMMARY_FILE})")
        if self.mlflow_pending:
            out.append(
                f"MLflow: {self.mlflow_pending} operations not yet sent to {self.tracking_uri} ({self.mlflow_error}); "
                f"they are kept in {self.mlflow_journal}: run `fishr-tune mlflow-sync {self.mlflow_journal}` once it is reachable"
            )
        elif self.tracking_uri:
            out.append(f"MLflow: experiment {self.name!r} in {self.tracking_uri}")
            if self.mlflow_view.startswith("#"):  # a local store: the UI is `mlflow ui`'s (127.0.0.1:5000 by default)
                out.append(f"  trials ranked by best_val_acc (its Views menu: {records.VIEW_NAME!r}): `mlflow ui "
                           f"--backend-store-uri {self.tracking_uri}`, then http://127.0.0.1:5000/{self.mlflow_view}")
            elif self.mlflow_view:
                out.append(f"  trials ranked by best_val_acc (its Views menu: {records.VIEW_NAME!r}): {self.mlflow_view}")
        return out


def trial_outcome(trial: Any, steps: int, completed: Collection[str] = ()) -> str:
    """running / pending / finished / stopped_early / failed / unfinished, from Tune's status and the last result.

    A trial ended when Tune completed it (`completed`: on_trial_complete in this session, for a trainable that
    returned or a trial the scheduler stopped; or restored as ended, see ProgressCallback.ended) or marked its last
    result `done`. A trial that an interruption (Ctrl-C, a lost driver) cut off is TERMINATED without either, even
    after logging its final step, and --resume runs it on: it is unfinished, neither finished nor stopped early."""
    last = trial.last_result or {}
    if trial.status == "ERROR" or last.get(FAILURE_KEY):
        return "failed"
    if trial.status in ("RUNNING", "PENDING", "PAUSED"):
        return trial.status.lower() if trial.status != "PAUSED" else "pending"
    if not (last.get("done") or trial.trial_id in completed):
        return "unfinished"
    if last.get(records.STEP, -1) >= steps - 1:
        return "finished"
    return "stopped_early"


def failure_reason(trial: Any) -> str:
    last = trial.last_result or {}
    if last.get(FAILURE_KEY):
        return str(last[FAILURE_KEY])
    error_file = getattr(trial, "error_file", None)
    if error_file and os.path.exists(error_file):
        lines = [line for line in Path(error_file).read_text(encoding="utf-8").splitlines() if line.strip()]
        return lines[-1][:300] if lines else "error"
    return "error"


def count_groups(trials: Sequence[Any], spec: SweepSpec, completed: Collection[str] = ()) -> dict[str, GroupCounts]:
    groups = {group.key: GroupCounts() for group in spec.groups}
    for trial in trials:
        key = trial.config.get(GROUP_KEY)
        if key not in groups:
            continue
        counts = groups[key]
        outcome = trial_outcome(trial, spec.settings.steps, completed)
        setattr(counts, outcome, getattr(counts, outcome) + 1)
        best = trial.metric_analysis.get(records.VAL_ACC, {}).get("max") if hasattr(trial, "metric_analysis") else None
        if best is not None and math.isfinite(best) and (counts.best_val_acc is None or best > counts.best_val_acc):
            counts.best_val_acc = float(best)
            counts.best_trial = trial.trial_id
            counts.best_hparams = dict(trial.config.get("hparams", {}))
    return groups


def summarize_sweep(trials: Sequence[Any], spec: SweepSpec, experiment_dir: str, wall_time_s: float,
              completed: Collection[str] = ()) -> SweepSummary:
    groups = count_groups(trials, spec, completed)
    outcomes = [trial_outcome(t, spec.settings.steps, completed) for t in trials]
    never_started = spec.total_samples - len(trials)
    return SweepSummary(
        name=spec.name,
        experiment_dir=experiment_dir,
        trials=len(trials),
        finished=outcomes.count("finished"),
        stopped_early=outcomes.count("stopped_early"),
        failed=outcomes.count("failed"),
        unfinished=outcomes.count("running") + outcomes.count("pending") + outcomes.count("unfinished")
        + max(never_started, 0),
        steps_trained=sum(int((t.last_result or {}).get(STEPS_TRAINED, 0)) for t in trials),
        steps_without_early_stopping=spec.total_samples * spec.settings.steps,
        trial_compute_s=sum(float((t.last_result or {}).get("time_total_s", 0.0)) for t in trials),
        wall_time_s=wall_time_s,
        groups=groups,
        failures={t.trial_id: failure_reason(t) for t, o in zip(trials, outcomes) if o == "failed"},
    )
