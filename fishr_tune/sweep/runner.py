"""Runs a validated sweep on Ray Tune: one Tuner for every group, shared data, retries, resume and a summary."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import yaml

from fishr_tune import records
from fishr_tune.errors import ConfigError
from fishr_tune.sweep.mlflow_callback import MlflowCallback, finish_sweep_run, open_journal
from fishr_tune.sweep.mlflow_inputs import split_entities
from fishr_tune.sweep.outcomes import SUMMARY_FILE, GroupCounts, SweepSummary, count_groups, summarize
from fishr_tune.sweep.preflight import check_before_ray, check_cluster_resources
from fishr_tune.sweep.search import make_search
from fishr_tune.sweep.spec import SweepSpec
from fishr_tune.sweep.storage import SweepLocation
from fishr_tune.sweep.trainable import dataset_key, sweep_trainable
from fishr_tune.yaml_io import load_yaml, parse_yaml

SPEC_FILE = "sweep_spec.yaml"
TrialFunction = Callable[..., None]


def _tune_callback_base() -> type:
    from ray.tune import Callback

    return Callback


class ProgressCallback(_tune_callback_base()):  # type: ignore[misc]
    """Per group: trials running / finished / stopped early / failed and the best val_acc so far.

    A Rich live table on a terminal, otherwise a line per group whenever the counts change (at most every few s).
    """

    def __init__(self, spec: SweepSpec, stream: TextIO | None = None, interval_s: float = 5.0):
        self.spec = spec
        self.stream = stream or sys.stdout
        self.interval_s = interval_s
        self.last_print = -math.inf  # the first update shows at once, whatever time.monotonic() counts from
        self.last_state: Any = None
        self.live: Any = None
        self.trials: list[Any] = []
        self.completed: set[str] = set()  # trials Tune completed in this session (returned or stopped)
        self.started: set[str] = set()  # trials Tune started (or restarted) in this session

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the experiment: keep the settings, drop the terminal and the trials."""
        return {"spec": self.spec, "interval_s": self.interval_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"], None, state["interval_s"])  # type: ignore[misc]

    def _table(self, groups: dict[str, GroupCounts]) -> Any:
        from rich.table import Table

        table = Table(title=f"sweep {self.spec.name}")
        for column in ("group", "running", "finished", "stopped early", "failed", "best val_acc"):
            table.add_column(column, justify="left" if column == "group" else "right")
        for key, c in groups.items():
            best = "-" if c.best_val_acc is None else f"{c.best_val_acc:.4f}"
            table.add_row(key, str(c.running), str(c.finished), str(c.stopped_early), str(c.failed), best)
        return table

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.completed.add(trial.trial_id)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.started.add(trial.trial_id)

    @property
    def ended(self) -> set[str]:
        """Trials known to have ended: completed in this session, or restored already TERMINATED by --resume.

        Tune restores a trial that an interruption cut off as pending and runs it on, so one that comes back
        TERMINATED and is never started again had ended in an earlier session, even where the saved state lost
        the `done` of its last result (Tune can snapshot that result before marking it)."""
        restored_ended = {t.trial_id for t in self.trials if t.status == "TERMINATED" and t.trial_id not in self.started}
        return self.completed | restored_ended

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self.trials = trials
        now = time.monotonic()
        if now - self.last_print < (1.0 if self.live is not None else self.interval_s):
            return
        self.show(trials)
        self.last_print = now

    def show(self, trials: Sequence[Any]) -> None:
        groups = count_groups(trials, self.spec, self.ended)
        if self.stream.isatty():
            from rich.console import Console
            from rich.live import Live

            if self.live is None:
                self.live = Live(self._table(groups), console=Console(file=self.stream), auto_refresh=False)
                self.live.start()
            self.live.update(self._table(groups), refresh=True)
            return
        state = {k: asdict(v) for k, v in groups.items()}
        if state == self.last_state:
            return
        self.last_state = state
        stamp = time.strftime("%H:%M:%S")
        for key, c in groups.items():
            best = "-" if c.best_val_acc is None else f"{c.best_val_acc:.4f}"
            print(f"[{stamp}] {key}: {c.running} running, {c.finished} finished, {c.stopped_early} stopped early, "
                  f"{c.failed} failed, best val_acc {best}", file=self.stream, flush=True)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.trials = trials
        self.show(trials)
        if self.live is not None:
            self.live.stop()
            self.live = None


# What Tune's JSON and CSV loggers write per trial on the driver, and copy back from the storage when a trial starts again.
TRIAL_LOG_FILES = ("result.json", "progress.csv")


class KeepTrialLogsOnRetry(_tune_callback_base()):  # type: ignore[misc]
    """Uploads a failed trial's log files to the sweep's storage before Tune retries it.

    A trial that starts again from a checkpoint gets its result.json and progress.csv copied back from the
    storage over the driver's copies, and the storage holds them only as of Tune's last background sync: the
    records logged since (the checkpoint the retry resumes from among them) would vanish from result.json, and
    with them from `fishr-tune analyze`. Must come after any callback that logs on on_trial_recover.
    """

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        import pyarrow.fs

        storage = trial.storage
        try:
            storage.storage_filesystem.create_dir(storage.trial_fs_path, recursive=True)
            for name in TRIAL_LOG_FILES:
                local = Path(trial.local_path, name)
                if local.exists():
                    pyarrow.fs.copy_files(local.as_posix(), f"{storage.trial_fs_path}/{name}",
                                          destination_filesystem=storage.storage_filesystem)
        except Exception as error:  # noqa: BLE001  (the retry must go on; at worst its log misses records)
            print(f"warning: could not save the logs of trial {trial.trial_id} before its retry: {error}", file=sys.stderr)


def experiment_dir(spec: SweepSpec) -> SweepLocation:
    return SweepLocation.of(spec.settings.storage_path, spec.name)


def _spec_snapshot(spec: SweepSpec) -> dict[str, Any]:
    return spec.settings.model_dump(mode="json")


def check_experiment_dir(spec: SweepSpec, resume: bool) -> SweepLocation:
    """A new sweep needs a fresh directory; --resume needs the directory of the same sweep."""
    from ray.tune import Tuner

    location = experiment_dir(spec)
    exists = Tuner.can_restore(location.uri)
    if resume and not exists:
        raise ConfigError(f"--resume: no sweep to continue in {location.uri}")
    if not resume and exists:
        raise ConfigError(f"{location.uri} already holds sweep {spec.name!r}; pass --resume to continue it, or use another --name")
    saved = location.read_text(SPEC_FILE) if resume else None
    if saved is not None:
        previous = parse_yaml(saved, f"{location.uri}/{SPEC_FILE}") or {}
        mine = _spec_snapshot(spec)
        ignored = {"storage_path", "tracking_uri", "max_failures", "description", "system_metrics"}
        changed = sorted(k for k in mine if k not in ignored and previous.get(k) != mine[k])
        if changed:
            raise ConfigError(f"--resume: the sweep in {location.uri} was started with different settings ({', '.join(changed)})")
    return location


def ensure_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to a cluster (`address`) or start a local Ray; returns whether we started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    return True


# Where the Ray cluster launcher (`ray up`) puts the cluster's YAML on the head node; Tune looks for it too.
AUTOSCALING_CONFIG = "~/ray_bootstrap_config.yaml"


def _slots_on(node: dict[str, float], spec: SweepSpec) -> int:
    resources = spec.settings.resources
    slots = int(node.get("CPU", 0.0) // resources.cpu)
    if resources.gpu > 0:
        slots = min(slots, int(node.get("GPU", 0.0) // resources.gpu))
    return slots


def autoscaling_slots(spec: SweepSpec, config_path: str = AUTOSCALING_CONFIG) -> int:
    """Trials that fit on the largest cluster the autoscaler may build (0 when this is no autoscaling head):
    a cluster that starts with no GPU worker must still see every trial it can run as demand, or it never grows."""
    path = Path(config_path).expanduser()
    try:
        config = load_yaml(path) if path.exists() else None
    except ConfigError:
        return 0
    if not isinstance(config, dict) or not isinstance(config.get("available_node_types"), dict):
        return 0
    global_max = int(config.get("max_workers", 0) or 0)
    slots = 0
    for name, node_type in config["available_node_types"].items():
        if not isinstance(node_type, dict):
            continue
        count = 1 if name == config.get("head_node_type") else min(int(node_type.get("max_workers", global_max)), global_max)
        slots += count * _slots_on(node_type.get("resources") or {}, spec)
    return slots


def trial_slots(spec: SweepSpec) -> int:
    """How many trials fit on the cluster at once (or on the largest one its autoscaler may build)."""
    import ray

    cluster = ray.cluster_resources()
    now = _slots_on({"CPU": cluster.get("CPU", 1.0), "GPU": cluster.get("GPU", 0.0)}, spec)
    return max(1, now, autoscaling_slots(spec))


PENDING_TRIALS_ENV = "TUNE_MAX_PENDING_TRIALS_PG"


@contextmanager
def trials_follow_the_cluster(spec: SweepSpec) -> Iterator[int]:
    """No cap on trials in flight (Tune starts one wherever resources free up, also on nodes that join later),
    and as many trials kept pending as fit on the cluster now or on the largest one its autoscaler may build:
    Tune keeps only one pending for a custom searcher otherwise, so a cluster that starts empty would start (and
    the autoscaler add nodes for) trials one at a time. Computed again by every run, --resume included; a
    TUNE_MAX_PENDING_TRIALS_PG set by the user wins."""
    previous = os.environ.get(PENDING_TRIALS_ENV)
    pending = int(previous) if previous else trial_slots(spec)
    os.environ[PENDING_TRIALS_ENV] = str(pending)
    try:
        yield pending
    finally:
        if previous is None:
            os.environ.pop(PENDING_TRIALS_ENV, None)


def check_ray_resources(spec: SweepSpec) -> None:
    """On a running Ray (a cluster, or one a caller started) one trial must fit on a node it has or may launch."""
    import ray

    resources = spec.settings.resources
    check_cluster_resources(resources.cpu, resources.gpu, ray.nodes(), autoscaling_slots(spec), spec.source)


def build_datasets(spec: SweepSpec) -> dict[str, Any]:
    """Each (dataset, trial_seed, label_noise) built once, before Ray starts (a bad data_dir fails fast)."""
    from fishr_tune.data import get_dataset

    settings = spec.settings
    datasets = {}
    for trial_seed in sorted({g.trial_seed for g in spec.groups}):
        try:
            datasets[dataset_key(trial_seed)] = get_dataset(
                settings.dataset, data_dir=settings.data_dir, seed=trial_seed, label_noise=settings.label_noise
            )
        except ConfigError as error:
            raise ConfigError(f"{spec.source}: {error}") from None
    return datasets


def share_datasets(datasets: dict[str, Any]) -> dict[str, Any]:
    """Put each dataset in the object store once; every trial reads it from there instead of rebuilding it."""
    import ray

    return {key: ray.put(dataset) for key, dataset in datasets.items()}


def _tuner_internals(tuner: Any) -> Any:
    """The driver-side TunerInternal (private Ray API, bounded in pyproject.toml), or an error naming what moved."""
    internal = getattr(tuner, "_local_tuner", None)
    if internal is None or not hasattr(internal, "get_run_config") or not hasattr(internal, "_tune_config"):
        import ray

        raise RuntimeError(f"ray {ray.__version__}: Tuner._local_tuner (get_run_config, _tune_config) is not there; "
                           "--resume needs it (see tests/test_private_apis.py)")
    return internal


def run_sweep(
    spec: SweepSpec,
    *,
    resume: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    trainable: TrialFunction = sweep_trainable,
    callbacks: Sequence[Any] = (),
    stream: TextIO | None = None,
) -> SweepSummary:
    """Run (or, with `resume`, continue) the sweep; returns and saves the summary."""
    from ray import tune

    # Frequent per-trial checkpoints are by design here (every record); Tune's warning about them is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started = time.monotonic()
    check_before_ray(spec, address, num_cpus)
    location = check_experiment_dir(spec, resume)
    settings = spec.settings
    datasets = build_datasets(spec)
    inputs = {key: split_entities(dataset, int(key.split("=")[1]), settings.holdout_fraction) for key, dataset in datasets.items()}
    first = next(iter(datasets.values()))
    resolved = {"label_noise": first.info.get("label_noise", settings.label_noise), "data_source": first.source,
                "storage_path": location.storage_path}
    started_ray = ensure_ray(address, num_cpus)
    try:
        if address or not started_ray:
            check_ray_resources(spec)
        dataset_refs = share_datasets(datasets)
        del datasets
        run_settings = {
            "steps": settings.steps,
            "checkpoint_freq": settings.checkpoint_freq,
            "holdout_fraction": settings.holdout_fraction,
            "label_noise": settings.label_noise,
            # A trial that reserves a GPU trains on it; "auto" also lets it run where the GPU is only declared
            # (Ray's fake multi-node clusters in the tests) instead of failing there.
            "device": "auto" if settings.resources.gpu > 0 else "cpu",
            "cpus_per_trial": settings.resources.cpu,
            "system_metrics": settings.system_metrics,
        }
        resources = {"cpu": settings.resources.cpu, "gpu": settings.resources.gpu}
        wrapped = tune.with_resources(tune.with_parameters(trainable, dataset_refs=dataset_refs, run=run_settings), resources)
        progress = ProgressCallback(spec, stream)
        journal = open_journal(spec, location.journal_dir)
        mlflow_callback = MlflowCallback(spec, journal, inputs, {**resolved, "tracking_uri": journal.tracking_uri})
        mlflow_callback.start_sweep_run()
        run_callbacks = [progress, mlflow_callback, *callbacks, KeepTrialLogsOnRetry()]
        if resume:
            if not location.remote:  # Tune appends to each trial's result.json: a line torn by the crash goes aside first
                for result_file in sorted(Path(location.uri.removeprefix("file://")).glob(f"*/{TRIAL_LOG_FILES[0]}")):
                    records.repair_tail(result_file)
            tuner = tune.Tuner.restore(location.uri, trainable=wrapped, resume_unfinished=True, resume_errored=True)
            # Tuner.restore brings back the first session's callbacks; this session's display (and any callbacks
            # the caller passes now) replace them. Tuner has no public setter for this in Ray 2.60.
            internal = _tuner_internals(tuner)
            internal.get_run_config().callbacks = run_callbacks
            # A sweep started before concurrency followed the cluster saved the cap it had then; drop it.
            internal._tune_config.max_concurrent_trials = None
        else:
            location.write_text(SPEC_FILE, yaml.safe_dump(_spec_snapshot(spec), sort_keys=False))
            searcher, scheduler = make_search(spec)
            tuner = tune.Tuner(
                wrapped,
                tune_config=tune.TuneConfig(
                    metric=records.VAL_ACC, mode="max", search_alg=searcher, scheduler=scheduler,
                    num_samples=spec.total_samples, reuse_actors=True,
                    max_concurrent_trials=None,  # see trials_follow_the_cluster
                ),
                run_config=tune.RunConfig(
                    name=spec.name,
                    storage_path=location.storage_path,
                    failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    callbacks=run_callbacks,
                    verbose=0,
                ),
            )
        with trials_follow_the_cluster(spec):
            tuner.fit()
        summary = summarize(progress.trials, spec, location.uri, time.monotonic() - started, progress.ended)
        summary.mlflow_pending = finish_sweep_run(mlflow_callback, summary)
        summary.mlflow_error = journal.last_error
        summary.mlflow_journal = str(journal.directory)
        summary.tracking_uri = journal.tracking_uri
        location.write_text(SUMMARY_FILE, summary.to_json() + "\n")  # once, complete
        return summary
    finally:
        if started_ray:
            import ray

            ray.shutdown()
