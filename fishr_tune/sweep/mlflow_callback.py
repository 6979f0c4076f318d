"""The sweep's MLflow records: a Tune callback that journals every trial's records (see fishr_tune.tracking).

Logging happens in the driver, from the results Tune already collects, so trials never talk to MLflow and
a slow or dead tracking server never slows training. A retried or resumed trial keeps its Ray trial id and
therefore its MLflow run; a (trial, step) already journaled is never journaled again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ray.tune import Callback

from fishr_tune import records
from fishr_tune.analysis.plots import accuracy_curves
from fishr_tune.data import DATASET_ENVIRONMENTS
from fishr_tune.hparams import apply_overrides, default_hparams
from fishr_tune.space import Distribution
from fishr_tune.sweep import mlflow_inputs
from fishr_tune.sweep.spec import SweepSpec
from fishr_tune.sweep.trial import FAILURE_KEY, GROUP_KEY
from fishr_tune.tracking import MlflowJournal

SWEEP_KEY = "sweep"
JOURNAL_DIR = "mlflow"
VIEW_NAME = records.VIEW_NAME
METRIC_NAMES = (records.VAL_ACC, records.VAL_NLL, records.LOSS, records.NLL, records.PENALTY, records.STEP_TIME,
                records.INCONSISTENCY, records.INCONSISTENCY_DIAGONAL)
FLUSH_INTERVAL_S = 2.0
# The trial's args (seed, steps, label_noise, ...) as its first record held them, plus the sweep's data_dir:
# what `fishr-tune analyze --best-config` needs to write a config that reruns the trial.
# Within one trial: the best training-domain validation accuracy so far and its step (ties: the earliest), so
# sorting the run list by best_val_acc ranks trials as `fishr-tune analyze`'s training_domain selection does.
BEST_VAL_ACC = "best_val_acc"
BEST_VAL_STEP = "best_val_step"
SYSTEM_PREFIX = "system/"  # MLflow's system metrics (its UI shows them in their own section)
DESCRIPTION_TAG = "mlflow.note.content"  # the run's (and the experiment's) description in MLflow's UI
# The experiment tag MLflow 3's UI reads to pick its default view; without it an experiment opens on GenAI traces.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# One artifact path shared by every trial, so MLflow's compare view shows the trials' plots side by side. At the
# root: that view (3.17) compares only the files of the root listing, and says "No common artifacts" for a folder.
ACCURACY_PLOT = "accuracy.png"
# MLflow 3.17 keeps the run list's columns, sort and filter per browser (localStorage): a new user sees Source, Models
# and Dataset only. Its one experiment-side hook is a saved view, an experiment tag `mlflow.sharedViewState.<id>`
# holding {name, createdAt, updatedAt, state: JSON string}, listed under *Views* and opened by
# `#/experiments/<id>/runs?viewStateShareKey=<id>`. We save one per sweep: the trials, ranked by best_val_acc.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_ID = "fishr-tune-trials"
SELECTED_RUN_TAG = "selected_run."  # + flat group name, on the parent: the run id training_domain selects
# A digest of the trial's config (group, sample index, seed, hyperparameters): after a driver crash Tune may re-create
# a trial it had not yet saved under a new id; the same digest lets the new trial continue the old trial's run.
CONFIG_TAG = "fishr_tune.config"
NOTE_TAG = "fishr_tune.note"


def resolve_tracking_uri(uri: str) -> str:
    """`sqlite:///relative.db` is made absolute so `mlflow-sync` from another directory finds the same store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def open_journal(spec: SweepSpec, journal_dir: Path) -> MlflowJournal:
    return MlflowJournal(journal_dir, resolve_tracking_uri(spec.settings.tracking_uri), spec.name)


def config_digest(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def trial_run_name(config: dict[str, Any], trial_id: str) -> str:
    """The whole Ray trial id: the sweep's summary and `fishr-tune analyze` name trials by it, so a reader finds
    their `Run` in MLflow's list as it is printed (a shortened id matched neither)."""
    envs = "-".join(str(e) for e in config["test_envs"])
    return f"{config['algorithm']} te{envs} ts{config['trial_seed']} {trial_id}"


def flat_name(group: str) -> str:
    """A group key (`Fishr/te2/ts0`) as one metric-name segment: MLflow's UI turns `/` into chart sections."""
    return group.replace("/", "_")


def _format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_description(config: dict[str, Any], outcome: str, best: tuple[float, int] | None) -> str:
    """The run's description (Markdown): what was trained and how it ended."""
    dataset = config["dataset"]
    names = DATASET_ENVIRONMENTS.get(dataset, ())
    tests = ", ".join(f"{e} ({names[e]})" if e < len(names) else str(e) for e in config["test_envs"])
    searched = ", ".join(f"`{k}`={_format_value(v)}" for k, v in sorted(config.get("hparams", {}).items()))
    lines = [f"**{config['algorithm']}** on {dataset}, test env {tests}, trial seed {config['trial_seed']} "
             f"(group `{config.get(GROUP_KEY, '')}`).", "", f"**{outcome[0].upper()}{outcome[1:]}.**"]
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
            f"*{VIEW_NAME}*), never by a test environment's accuracy.")
    return "\n\n".join(part for part in (settings.description and settings.description.strip(), outcome, text) if part)


def trials_view(spec: SweepSpec, now_ms: int | None = None) -> str:
    """The saved view's tag value: trial runs only (a flat list, the parent hidden), sorted by best_val_acc, with
    the columns that answer "which configuration is best": validation, where it peaked, the searched hyperparameters."""
    searched = sorted({name for space in spec.spaces.values() for name, value in space.items() if isinstance(value, Distribution)})
    columns = ([f"metrics.`{name}`" for name in (BEST_VAL_ACC, BEST_VAL_STEP, records.VAL_ACC)]
               + [f"params.`{name}`" for name in searched] + ["tags.`group`", "tags.`status`"])
    state = {"searchFilter": "tags.`fishr_tune.kind` = 'trial'", "orderByKey": f"metrics.`{BEST_VAL_ACC}`",
             "orderByAsc": False, "selectedColumns": columns, "runsHiddenMode": "SHOW_ALL"}
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return json.dumps({"name": VIEW_NAME, "createdAt": now_ms, "updatedAt": now_ms, "state": json.dumps(state)})


def view_url(tracking_uri: str, experiment_name: str) -> str:
    """Where the saved view opens: a full URL for a tracking server, the UI's route otherwise ("" if unknown)."""
    from mlflow.tracking import MlflowClient

    try:
        experiment = MlflowClient(tracking_uri).get_experiment_by_name(experiment_name)
    except Exception:  # noqa: BLE001  (a link is a convenience: never fail a finished sweep over it)
        return ""
    if experiment is None:
        return ""
    # workflowType: MLflow 3.17's UI otherwise keeps its GenAI navigation around the training-runs list
    route = f"#/experiments/{experiment.experiment_id}/runs?viewStateShareKey={VIEW_ID}&workflowType=machine_learning"
    return f"{tracking_uri.rstrip('/')}/{route}" if tracking_uri.startswith(("http://", "https://")) else route


class MlflowCallback(Callback):
    """`inputs`: per dataset key (trial seed), the MLflow dataset entities of every split (mlflow_inputs.split_entities);
    `resolved`: the settings as the sweep really used them (absolute paths, the dataset's label noise), for the parent."""

    def __init__(self, spec: SweepSpec, journal: MlflowJournal, inputs: dict[str, Any] | None = None,
                 resolved: dict[str, Any] | None = None):
        self.spec = spec
        self.journal = journal
        self.inputs = inputs or {}
        self.resolved = resolved or {}
        self.source_tags = mlflow_inputs.source_tags(f"fishr-tune sweep {Path(spec.source).name}")
        self.best: dict[str, tuple[float, int]] = {}
        self.meta: dict[str, dict[str, Any]] = {}
        self.logged: dict[str, set[int]] = defaultdict(set)
        self.points: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.started: set[str] = set()
        self.args_tagged: set[str] = set()
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()
        self._closer: ThreadPoolExecutor | None = None
        self._closing: list[Future[None]] = []
        self.ended: set[str] = set()
        self.digests: dict[str, str] = {}  # trial key -> config digest
        self.adoptable: dict[str, str] = {}  # config digest -> key of a run closed as KILLED, not yet re-adopted
        self._reconciled = False
        for op in journal.operations():  # a resumed driver: what is journaled already stays journaled once
            key = op["key"]
            if op["op"] == "start":
                self.started.add(key)
                self.ended.discard(key)
                if CONFIG_TAG in op.get("tags", {}):
                    self.digests[key] = op["tags"][CONFIG_TAG]
                if op["tags"].get(records.KIND_TAG) == records.KIND_TRIAL:
                    tags = op["tags"]
                    self.meta[key] = {"dataset": tags["dataset"], "algorithm": tags["algorithm"],
                                      "test_envs": json.loads(tags["test_envs"]), "trial_seed": int(tags["trial_seed"])}
            elif op["op"] == "adopt":
                previous = op["from"]
                self.started.add(key)
                self.ended.discard(key)
                self.logged[key] |= self.logged[previous]
                self.points[key] = [*self.points[previous], *self.points[key]]
                self.args_tagged |= {key} if previous in self.args_tagged else set()
                if previous in self.digests:
                    self.digests[key] = self.digests[previous]
                    self.adoptable.pop(self.digests[previous], None)
            elif op["op"] == "end":
                self.ended.add(key)
                if op.get("status") == "KILLED" and key in self.digests:
                    self.adoptable[self.digests[key]] = key
                else:
                    self.adoptable = {d: k for d, k in self.adoptable.items() if k != key}
            elif op["op"] == "tags" and records.ARGS_TAG in op["tags"]:
                self.args_tagged.add(key)
            elif op["op"] == "metrics":
                self.logged[key].add(op["step"])
                self.points[key].append({"step": op["step"], **op["metrics"]})
                value = op["metrics"].get(BEST_VAL_ACC)
                if value is not None and op["metrics"].get(BEST_VAL_STEP) is not None:
                    self.best[key] = (float(value), int(op["metrics"][BEST_VAL_STEP]))

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "journal_dir": str(self.journal.directory), "uri": self.journal.tracking_uri,
                "inputs": self.inputs, "resolved": self.resolved}

    def __setstate__(self, state: dict[str, Any]) -> None:
        journal = MlflowJournal(state["journal_dir"], state["uri"], state["spec"].name)
        self.__init__(state["spec"], journal, state.get("inputs"), state.get("resolved"))  # type: ignore[misc]

    def start_sweep_run(self) -> None:
        if SWEEP_KEY in self.started:
            return
        settings = self.spec.settings.model_dump(mode="json")
        settings.pop("description", None)  # the experiment's and the parent's description, not a param
        params = {k: v for k, v in settings.items() if not isinstance(v, (dict, list)) or k in ("algorithms", "test_envs", "trial_seeds")}
        for section in ("search", "scheduler", "resources"):
            params.update({f"{section}.{k}": v for k, v in settings.get(section, {}).items()})
        params.update(self.resolved)
        description = sweep_description(self.spec)
        self.journal.set_experiment_tags({EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, DESCRIPTION_TAG: description,
                                          f"{VIEW_TAG_PREFIX}{VIEW_ID}": trials_view(self.spec)})
        self.journal.start_run(SWEEP_KEY, self.spec.name, params=params,
                               tags={records.KIND_TAG: records.KIND_SWEEP, "dataset": self.spec.settings.dataset,
                                     DESCRIPTION_TAG: description, records.SPACE_TAG: json.dumps(space_kinds(self.spec)),
                                     **self.source_tags})
        if Path(self.spec.source).exists():
            self.journal.log_artifact(SWEEP_KEY, self.spec.source)
        self.started.add(SWEEP_KEY)

    def _flush_in_background(self) -> None:
        """Sending happens off the driver's result loop: a slow or dead server never delays Tune."""
        while not self._stop.wait(FLUSH_INTERVAL_S):
            self.journal.flush()

    def _ensure_flusher(self) -> None:
        if self._flusher is None or not self._flusher.is_alive():
            self._stop.clear()
            self._flusher = threading.Thread(target=self._flush_in_background, name="mlflow-journal", daemon=True)
            self._flusher.start()

    def stop_flusher(self) -> None:
        self.wait_for_closing_runs()
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None

    def setup(self, **info: Any) -> None:
        self.start_sweep_run()
        self._ensure_flusher()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.stop_flusher()

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if not self._reconciled:
            self._reconciled = True
            self.reconcile(trials)

    def reconcile(self, trials: list[Any]) -> None:
        """After a resume: close the runs of trials that Tune no longer knows, and those Tune holds as done.

        A driver killed before Tune saved its state loses the trials it created since; Tune re-creates them under
        new ids. Their runs are closed as KILLED with a note, and re-adopted (on_trial_start) by the trial that
        brings back the same configuration, so each configuration keeps one run and none stays RUNNING.
        """
        known = {trial.trial_id: trial for trial in trials}
        for key in sorted(self.started - self.ended - {SWEEP_KEY}):
            trial = known.get(key)
            if trial is None:
                self.journal.set_tags(key, {"status": "killed: lost with the driver", NOTE_TAG: (
                    "Ray Tune no longer knows this trial after --resume (the driver died before saving it); "
                    "a trial with the same configuration continues this run")})
                self.journal.end_run(key, "KILLED")
                self.ended.add(key)
                if key in self.digests:
                    self.adoptable[self.digests[key]] = key
            elif trial.status == "TERMINATED":
                self.on_trial_complete(0, trials, trial)
            elif trial.status == "ERROR":
                self.on_trial_error(0, trials, trial)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        config = trial.config
        key = trial.trial_id
        digest = config_digest(config)
        previous = self.adoptable.pop(digest, None) if key not in self.started else None
        if key in self.started:
            self.journal.set_tags(key, {"status": "running"})
        elif previous is not None:
            self.journal.adopt_run(key, previous, tags={"ray_trial_id": key, "status": "running", NOTE_TAG: (
                f"continues the run of Ray trial {previous}, which Tune re-created under this id after --resume")})
            self.started.add(key)
            self.ended.discard(key)
            self.digests[key] = digest
            self.logged[key] |= self.logged[previous]  # the same configuration replays the same records: log them once
            self.points[key] = list(self.points[previous])
            if previous in self.best:
                self.best[key] = self.best[previous]
            if previous in self.args_tagged:
                self.args_tagged.add(key)
        else:
            dataset = config["dataset"]
            tags = {
                "dataset": dataset, "algorithm": config["algorithm"], "test_envs": json.dumps(list(config["test_envs"])),
                "trial_seed": config["trial_seed"], "group": config.get(GROUP_KEY, ""), "ray_trial_id": key,
                "status": "running", records.KIND_TAG: records.KIND_TRIAL, CONFIG_TAG: digest,
                DESCRIPTION_TAG: trial_description(config, "running", None), **self.source_tags,
            }
            for i, name in enumerate(DATASET_ENVIRONMENTS.get(dataset, ())):
                tags[f"env{i}"] = name
            params = apply_overrides(config["algorithm"], dataset, default_hparams(config["algorithm"], dataset),
                                     config.get("hparams", {}))
            self.journal.start_run(key, trial_run_name(config, key), parent=SWEEP_KEY, params=params, tags=tags)
            entities = self.inputs.get(f"trial_seed={config['trial_seed']}")
            if entities:
                self.journal.log_inputs(key, mlflow_inputs.trial_inputs(entities, list(config["test_envs"])))
            self.started.add(key)
            self.digests[key] = digest
        self.meta[key] = {"dataset": config["dataset"], "algorithm": config["algorithm"],
                          "test_envs": list(config["test_envs"]), "trial_seed": int(config["trial_seed"])}
        self._ensure_flusher()

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any) -> None:
        key = trial.trial_id
        step = result.get(records.STEP)
        if step is None or result.get(FAILURE_KEY) or int(step) in self.logged[key]:
            return
        metrics = {k: v for k, v in result.items() if (k.startswith("env") and k.endswith("_acc")) or k in METRIC_NAMES
                   or k.startswith(SYSTEM_PREFIX)}
        if not any(k.startswith("env") for k in metrics):
            return
        if key not in self.started:
            self.on_trial_start(iteration, trials, trial)
        value = metrics.get(records.VAL_ACC)
        if isinstance(value, (int, float)) and value == value and (key not in self.best or value > self.best[key][0]):
            self.best[key] = (float(value), int(step))
        if key in self.best:
            metrics[BEST_VAL_ACC], metrics[BEST_VAL_STEP] = self.best[key]
        timestamp = int(result.get("timestamp", time.time()) * 1000)
        self.journal.log_metrics(key, metrics, step=int(step), timestamp_ms=timestamp)
        self.logged[key].add(int(step))
        self.points[key].append({"step": int(step), **metrics})
        if key not in self.args_tagged:
            args = {k[len("args."):]: v for k, v in result.items() if k.startswith("args.")}
            if args:
                args.setdefault("data_dir", self.spec.settings.data_dir or os.environ.get("FISHR_TUNE_DATA"))
                self.journal.set_tags(key, {records.ARGS_TAG: json.dumps(args, sort_keys=True, default=str)})
                self.args_tagged.add(key)

    def _finish(self, trial: Any, status: str, mlflow_status: str) -> None:
        """Closes the trial's run off Tune's event loop: its plot costs ~0.3 s of matplotlib (2 s on a loaded CPU),
        which on the loop would hold every finished trial's slot idle meanwhile (a fifth of a tiny-trial sweep)."""
        key = trial.trial_id
        if key not in self.started:
            self.on_trial_start(0, [], trial)
        config = dict(trial.config)
        points = sorted(self.points.get(key, []), key=lambda p: p["step"])
        if self._closer is None:
            self._closer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-close-run")
        self._closing.append(self._closer.submit(self._close_run, key, config, points, status, mlflow_status))

    def _close_run(self, key: str, config: dict[str, Any], points: list[dict[str, Any]], status: str,
                   mlflow_status: str) -> None:
        if points:
            plot = accuracy_curves(
                points, list(config["test_envs"]), DATASET_ENVIRONMENTS.get(config["dataset"], ()),
                f"{trial_run_name(config, key)} — {status}", self.journal.directory / "plots" / key / ACCURACY_PLOT,
            )
            self.journal.log_artifact(key, plot)
        self.journal.set_tags(key, {"status": status, DESCRIPTION_TAG: trial_description(config, status, self.best.get(key))})
        self.journal.end_run(key, mlflow_status)
        self.ended.add(key)

    def wait_for_closing_runs(self) -> None:
        """Every trial run closed so far is journaled (plot, status, end) when this returns."""
        closing, self._closing = self._closing, []
        for future in closing:
            future.result()

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        if last.get(FAILURE_KEY):
            self._finish(trial, f"failed: {last[FAILURE_KEY]}", "FAILED")
            return
        step = int(last.get(records.STEP, -1))
        if step >= self.spec.settings.steps - 1:
            self._finish(trial, "finished", "FINISHED")
        else:
            # MLflow's UI shows KILLED as "Killed" with a grey icon, apart from the green "Finished" of complete runs.
            by = " by ASHA" if self.spec.settings.scheduler.type == "asha" else ""
            self._finish(trial, f"stopped early at step {step}{by}", "KILLED")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        from fishr_tune.sweep.outcomes import failure_reason

        self._finish(trial, f"failed: {failure_reason(trial)}", "FAILED")


def finish_sweep_run(callback: MlflowCallback, summary: Any) -> int:
    """The summary as the parent run's metrics and tags; returns the operations still pending."""
    callback.stop_flusher()
    journal = callback.journal
    metrics = {
        "trials": summary.trials, "finished": summary.finished, "stopped_early": summary.stopped_early,
        "failed": summary.failed, "unfinished": summary.unfinished, "steps_trained": summary.steps_trained,
        "steps_without_early_stopping": summary.steps_without_early_stopping, "wall_time_s": summary.wall_time_s,
    }
    journal.log_metrics(SWEEP_KEY, metrics, step=0)
    best = {f"{BEST_VAL_ACC}_{flat_name(key)}": counts.best_val_acc for key, counts in summary.groups.items()
            if counts.best_val_acc is not None}
    if best:
        journal.log_metrics(SWEEP_KEY, best, step=0)
    selected = selected_trials(callback)
    if selected:
        journal.set_run_refs(SWEEP_KEY, {f"{SELECTED_RUN_TAG}{flat_name(group)}": key for group, key in selected.items()})
        journal.set_tags(SWEEP_KEY, {DESCRIPTION_TAG: sweep_description(callback.spec, selection_note(callback, selected))})
    journal.set_tags(SWEEP_KEY, {"status": "interrupted" if summary.unfinished else "finished"})
    if not summary.unfinished:
        journal.end_run(SWEEP_KEY, "FINISHED")
    return journal.flush(force=True)


def selection_note(callback: MlflowCallback, selected: dict[str, str]) -> str:
    """The parent's description names each group's selected trial by its run name: the `selected_run.<group>`
    tags hold run ids, which say nothing to a reader scanning the run list."""
    lines = ["**Selected by training-domain validation** (tags `selected_run.<group>`):"]
    for group, key in sorted(selected.items()):
        meta = callback.meta.get(key)
        name = trial_run_name(meta, key) if meta else key
        best = callback.best.get(key)
        lines.append(f"- `{group}`: **{name}**" + (f", best_val_acc {best[0]:.4f} at step {best[1]}" if best else ""))
    return "\n".join(lines)


def selected_trials(callback: MlflowCallback) -> dict[str, str]:
    """Group key -> the trial that `fishr-tune analyze` selects with training_domain, from the journaled records."""
    import pandas as pd

    from fishr_tune.analysis.selection import select
    from fishr_tune.analysis.table import RUN, selection_table

    rows = []
    for key, points in callback.points.items():
        meta = callback.meta.get(key)
        if meta is None:
            continue
        args = {f"args.{name}": value for name, value in meta.items()}
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
