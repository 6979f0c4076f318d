"""The sweep's tracking records: a Tune callback that writes every trial's records through a Tracker.

Logging happens in the driver, from the results Tune already collects, so trials never talk to MLflow and
a slow or dead tracking server never slows training. A retried or resumed trial keeps its Ray trial id and
therefore its run; a (trial, step) already journaled is never journaled again.
"""

from __future__ import annotations

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
from fishr_tune.sweep import mlflow_inputs
from fishr_tune.sweep.outcomes import failure_reason
from fishr_tune.sweep.spec import SweepSpec
from fishr_tune.sweep.system_metrics import PREFIX as SYSTEM_PREFIX
from fishr_tune.sweep.tracking_text import (
    config_digest,
    space_kinds,
    sweep_description,
    trial_description,
    trial_run_name,
    trials_view,
)
from fishr_tune.sweep.trial import FAILURE_KEY, Group, TrialSpec
from fishr_tune.tracking import MlflowJournal, Tracker, resolve_tracking_uri
from fishr_tune.tracking.mlflow_ui import (
    DESCRIPTION_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    VIEW_ID,
    VIEW_TAG_PREFIX,
)

SWEEP_KEY = "sweep"  # the parent run's key; trial runs are keyed by their Ray trial id
METRIC_NAMES = (records.VAL_ACC, records.VAL_NLL, records.LOSS, records.NLL, records.PENALTY, records.STEP_TIME,
                records.INCONSISTENCY, records.INCONSISTENCY_DIAGONAL)
FLUSH_INTERVAL_S = 2.0
# One artifact path shared by every trial, so MLflow's compare view shows the trials' plots side by side. At the
# root: that view (3.17) compares only the files of the root listing, and says "No common artifacts" for a folder.
ACCURACY_PLOT = "accuracy.png"
# After a driver crash Tune may re-create a trial it had not yet saved under a new id; the same config digest
# (records.CONFIG_TAG) lets the new trial continue the old trial's run, and this tag says so on the run.
NOTE_TAG = "fishr_tune.note"


def open_journal(spec: SweepSpec, journal_dir: Path) -> MlflowJournal:
    return MlflowJournal(journal_dir, resolve_tracking_uri(spec.settings.tracking_uri), spec.name)


class TrackingCallback(Callback):
    """Writes through `journal`, any Tracker (a sweep's MlflowJournal), and rebuilds its state from the journal's
    operations when a driver resumes. `inputs`: per dataset key (trial seed), the MLflow dataset entities of every
    split (mlflow_inputs.split_entities); `resolved`: the settings as the sweep really used them (absolute paths, the
    dataset's label noise), for the parent."""

    def __init__(self, spec: SweepSpec, journal: Tracker, inputs: dict[str, Any] | None = None,
                 resolved: dict[str, Any] | None = None):
        self.spec = spec
        self.journal = journal
        self.inputs = inputs or {}
        self.resolved = resolved or {}
        self.source_tags = mlflow_inputs.source_tags(f"fishr-tune sweep {Path(spec.source).name}")
        self.best: dict[str, tuple[float, int]] = {}
        self.meta: dict[str, Group] = {}  # each trial's group, for run names and the selection at the end
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
                if records.CONFIG_TAG in op.get("tags", {}):
                    self.digests[key] = op["tags"][records.CONFIG_TAG]
                if op["tags"].get(records.KIND_TAG) == records.KIND_TRIAL:
                    tags = op["tags"]
                    self.meta[key] = Group(tags["dataset"], tags["algorithm"], tuple(json.loads(tags["test_envs"])),
                                           int(tags["trial_seed"]))
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
                value = op["metrics"].get(records.BEST_VAL_ACC)
                if value is not None and op["metrics"].get(records.BEST_VAL_STEP) is not None:
                    self.best[key] = (float(value), int(op["metrics"][records.BEST_VAL_STEP]))

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "journal": self.journal, "inputs": self.inputs, "resolved": self.resolved}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"], state["journal"], state.get("inputs"), state.get("resolved"))  # type: ignore[misc]

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

    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
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
        spec = TrialSpec.from_config(config)
        group = spec.selection_group()
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
            tags = {
                "dataset": spec.dataset, "algorithm": spec.algorithm, "test_envs": json.dumps(list(spec.test_envs)),
                "trial_seed": spec.trial_seed, "group": spec.group, "ray_trial_id": key,
                "status": "running", records.KIND_TAG: records.KIND_TRIAL, records.CONFIG_TAG: digest,
                DESCRIPTION_TAG: trial_description(spec, "running", None), **self.source_tags,
            }
            for i, name in enumerate(DATASET_ENVIRONMENTS.get(spec.dataset, ())):
                tags[f"env{i}"] = name
            params = apply_overrides(spec.algorithm, spec.dataset, default_hparams(spec.algorithm, spec.dataset),
                                     dict(spec.hparams))
            self.journal.start_run(key, trial_run_name(group, key), parent=SWEEP_KEY, params=params, tags=tags)
            entities = self.inputs.get(f"trial_seed={spec.trial_seed}")
            if entities:
                self.journal.log_inputs(key, mlflow_inputs.trial_inputs(entities, list(spec.test_envs)))
            self.started.add(key)
            self.digests[key] = digest
        self.meta[key] = group
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
            metrics[records.BEST_VAL_ACC], metrics[records.BEST_VAL_STEP] = self.best[key]
        timestamp = int(result.get("timestamp", time.time()) * 1000)
        self.journal.log_metrics(key, metrics, step=int(step), timestamp_ms=timestamp)
        self.logged[key].add(int(step))
        self.points[key].append({"step": int(step), **metrics})
        if key not in self.args_tagged:
            args = {k[len(records.ARG_PREFIX):]: v for k, v in result.items() if k.startswith(records.ARG_PREFIX)}
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
        spec = TrialSpec.from_config(trial.config)
        points = sorted(self.points.get(key, []), key=lambda p: p["step"])
        if self._closer is None:
            self._closer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-close-run")
        self._closing.append(self._closer.submit(self._close_run, key, spec, points, status, mlflow_status))

    def _close_run(self, key: str, spec: TrialSpec, points: list[dict[str, Any]], status: str,
                   mlflow_status: str) -> None:
        if points:
            plot = accuracy_curves(
                points, list(spec.test_envs), DATASET_ENVIRONMENTS.get(spec.dataset, ()),
                f"{trial_run_name(spec.selection_group(), key)} — {status}", self.journal.directory / "plots" / key / ACCURACY_PLOT,
            )
            self.journal.log_artifact(key, plot)
        self.journal.set_tags(key, {"status": status, DESCRIPTION_TAG: trial_description(spec, status, self.best.get(key))})
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
            # KILLED: MLflow 3.17 shows "Killed" (a red cross), so a stopped trial never passes for a complete one.
            by = " by ASHA" if self.spec.settings.scheduler.type == "asha" else ""
            self._finish(trial, f"stopped early at step {step}{by}", "KILLED")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._finish(trial, f"failed: {failure_reason(trial)}", "FAILED")
