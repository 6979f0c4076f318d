"""The sweep's parent run at the end: the summary's counts, each group's best, and the trial that
training-domain selection picks in every group (named in the parent's description, linked by tag)."""

from __future__ import annotations

from typing import Any

from fishr_tune import records
from fishr_tune.sweep.outcomes import SweepSummary
from fishr_tune.sweep.tracking_callback import SWEEP_KEY, TrackingCallback
from fishr_tune.sweep.tracking_text import flat_name, sweep_description, trial_run_name
from fishr_tune.tracking.mlflow_ui import DESCRIPTION_TAG


def finish_sweep_run(callback: TrackingCallback, summary: SweepSummary) -> int:
    """The summary as the parent run's metrics and tags; returns the operations still pending."""
    callback.stop_flusher()
    journal = callback.journal
    metrics = {
        "trials": summary.trials, "finished": summary.finished, "stopped_early": summary.stopped_early,
        "failed": summary.failed, "unfinished": summary.unfinished, "steps_trained": summary.steps_trained,
        "steps_without_early_stopping": summary.steps_without_early_stopping, "wall_time_s": summary.wall_time_s,
    }
    journal.log_metrics(SWEEP_KEY, metrics, step=0)
    best = {f"{records.BEST_VAL_ACC}_{flat_name(key)}": counts.best_val_acc for key, counts in summary.groups.items()
            if counts.best_val_acc is not None}
    if best:
        journal.log_metrics(SWEEP_KEY, best, step=0)
    selected = selected_trials(callback)
    if selected:
        journal.set_run_refs(SWEEP_KEY, {f"{records.SELECTED_RUN_TAG}{flat_name(group)}": key for group, key in selected.items()})
        journal.set_tags(SWEEP_KEY, {DESCRIPTION_TAG: sweep_description(callback.spec, selection_note(callback, selected))})
    journal.set_tags(SWEEP_KEY, {"status": "interrupted" if summary.unfinished else "finished"})
    if not summary.unfinished:
        journal.end_run(SWEEP_KEY, "FINISHED")
    return journal.flush(force=True)


def selection_note(callback: TrackingCallback, selected: dict[str, str]) -> str:
    """The parent's description names each group's selected trial by its run name: the `selected_run.<group>`
    tags hold run ids, which say nothing to a reader scanning the run list."""
    lines = ["**Selected by training-domain validation** (tags `selected_run.<group>`):"]
    for group, key in sorted(selected.items()):
        meta = callback.meta.get(key)
        name = trial_run_name(meta, key) if meta else key
        best = callback.best.get(key)
        lines.append(f"- `{group}`: **{name}**" + (f", best_val_acc {best[0]:.4f} at step {best[1]}" if best else ""))
    return "\n".join(lines)


def selected_trials(callback: TrackingCallback) -> dict[str, str]:
    """Group key -> the trial that `fishr-tune analyze` selects with training_domain, from the journaled records."""
    import pandas as pd

    from fishr_tune.analysis.selection import select
    from fishr_tune.analysis.table import RUN, selection_table

    rows: list[dict[str, Any]] = []
    for key, points in callback.points.items():
        meta = callback.meta.get(key)
        if meta is None:
            continue
        args = {records.arg_column("dataset"): meta.dataset, records.arg_column("algorithm"): meta.algorithm,
                records.arg_column("test_envs"): list(meta.test_envs), records.arg_column("trial_seed"): meta.trial_seed}
        rows.extend({**args, **{k: v for k, v in point.items() if k.startswith("env")}, "step": point["step"], RUN: key}
                    for point in points)
    if not rows:
        return {}
    chosen = select(selection_table(pd.DataFrame(rows)), "training_domain")
    out = {}
    for row in chosen.to_dict("records"):
        group = f"{row['algorithm']}/te{row['test_env']}/ts{row['trial_seed']}"
        out[group] = str(row[RUN])
    return out
