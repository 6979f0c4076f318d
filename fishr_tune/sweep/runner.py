"""Runs a validated sweep on Ray Tune: one Tuner for every group, shared data, retries, resume and a summary."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from fishr_tune import records
from fishr_tune.errors import ConfigError
from fishr_tune.sweep.cluster import check_ray_resources, trials_follow_the_cluster
from fishr_tune.sweep.mlflow_inputs import split_entities
from fishr_tune.sweep.outcomes import SUMMARY_FILE, SweepSummary, summarize_sweep
from fishr_tune.sweep.preflight import check_before_ray
from fishr_tune.sweep.progress import ProgressCallback
from fishr_tune.sweep.saved_state import check_restorable
from fishr_tune.sweep.schedule import GroupScheduler, make_stopping
from fishr_tune.sweep.search import GroupSearcher
from fishr_tune.sweep.spec import SweepSpec
from fishr_tune.sweep.storage import SweepLocation
from fishr_tune.sweep.tracking_callback import TrackingCallback, open_journal
from fishr_tune.sweep.tracking_summary import finish_sweep_run
from fishr_tune.sweep.trainable import dataset_key, sweep_trainable
from fishr_tune.sweep.trial import RunSettings
from fishr_tune.sweep.trial_logs import TRIAL_LOG_FILES, KeepTrialLogsOnRetry
from fishr_tune.tracking.mlflow_ui import view_url
from fishr_tune.yaml_io import parse_yaml

SPEC_FILE = "sweep_spec.yaml"
TrialFunction = Callable[..., None]


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
        ignored = {"storage_path", "tracking_uri", "max_failures", "description", "system_metrics", "inconsistency_epsilon"}
        changed = sorted(k for k in mine if k not in ignored and previous.get(k) != mine[k])
        if changed:
            raise ConfigError(f"--resume: the sweep in {location.uri} was started with different settings ({', '.join(changed)})")
    if resume:
        check_restorable(location)
    return location


def make_search(spec: SweepSpec) -> tuple[GroupSearcher, GroupScheduler]:
    """The sweep's searcher and scheduler, each by the name its file gives (SEARCHERS, SCHEDULERS)."""
    settings = spec.settings
    searcher = GroupSearcher(spec.groups, spec.spaces, settings.search.num_samples, settings.search.algorithm,
                             settings.search.seed)
    stopping = make_stopping(settings.scheduler.type, settings.scheduler, settings.steps)
    return searcher, GroupScheduler([g.key for g in spec.groups], stopping)


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
        run_settings = RunSettings(
            steps=settings.steps,
            checkpoint_freq=settings.checkpoint_freq,
            holdout_fraction=settings.holdout_fraction,
            label_noise=settings.label_noise,
            device="auto" if settings.resources.gpu > 0 else "cpu",
            cpus_per_trial=settings.resources.cpu,
            system_metrics=settings.system_metrics,
            inconsistency_epsilon=settings.inconsistency_epsilon,
        )
        resources = {"cpu": settings.resources.cpu, "gpu": settings.resources.gpu}
        wrapped = tune.with_resources(tune.with_parameters(trainable, dataset_refs=dataset_refs, run=run_settings), resources)
        progress = ProgressCallback(spec, stream)
        journal = open_journal(spec, location.journal_dir)
        tracking = TrackingCallback(spec, journal, inputs, {**resolved, "tracking_uri": journal.tracking_uri})
        tracking.start_sweep_run()
        run_callbacks = [progress, tracking, *callbacks, KeepTrialLogsOnRetry()]
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
        summary = summarize_sweep(progress.trials, spec, location.uri, time.monotonic() - started, progress.ended)
        summary.mlflow_pending = finish_sweep_run(tracking, summary)
        summary.mlflow_error = journal.last_error
        summary.mlflow_journal = str(journal.directory)
        summary.tracking_uri = journal.tracking_uri
        if not summary.mlflow_pending:
            summary.mlflow_view = view_url(journal.tracking_uri, spec.name)
        location.write_text(SUMMARY_FILE, summary.to_json() + "\n")  # once, complete
        return summary
    finally:
        if started_ray:
            import ray

            ray.shutdown()
