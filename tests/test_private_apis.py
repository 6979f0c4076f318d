"""The private attributes of other libraries that fishr_tune reaches into, checked on the installed versions.

pyproject.toml bounds these libraries above; when a bound is raised, this test says at once which private API the
new version moved (by name, with the version), instead of a sweep failing at resume or at ASHA's first rung."""

from __future__ import annotations

from importlib.metadata import version

import numpy as np
import pytest


def _require(obj: object, attribute: str, library: str, used_in: str) -> object:
    """The attribute, or a failure that names it, the library version and the fishr_tune code that needs it."""
    if not hasattr(obj, attribute):
        pytest.fail(f"{library} {version(library)}: {type(obj).__name__}.{attribute} is gone; {used_in} uses it "
                    "(adapt that code, or keep the upper bound on this library in pyproject.toml)")
    return getattr(obj, attribute)


def test_ray_tuner_internals_used_on_resume(tmp_path):
    """sweep/runner.py replaces a restored Tuner's callbacks and drops its saved concurrency cap."""
    from ray import tune

    tuner = tune.Tuner(lambda config: None, run_config=tune.RunConfig(storage_path=str(tmp_path), name="probe"))
    internal = _require(tuner, "_local_tuner", "ray", "sweep/runner.py (resume)")
    assert internal is not None, "ray: Tuner._local_tuner is None on the driver; sweep/runner.py (resume) needs it"
    run_config = _require(internal, "get_run_config", "ray", "sweep/runner.py (resume)")()  # type: ignore[operator]
    assert hasattr(run_config, "callbacks"), f"ray {version('ray')}: RunConfig has no callbacks"
    tune_config = _require(internal, "_tune_config", "ray", "sweep/runner.py (resume)")
    _require(tune_config, "max_concurrent_trials", "ray", "sweep/runner.py (resume)")


def test_ray_asha_internals_used_by_the_group_scheduler():
    """sweep/search.py asks each group's ASHA which trials it knows and what its max_t is."""
    from ray.tune.schedulers import AsyncHyperBandScheduler

    scheduler = AsyncHyperBandScheduler(metric="val_acc", mode="max", max_t=10)
    assert isinstance(_require(scheduler, "_trial_info", "ray", "sweep/schedule.py (GroupScheduler)"), dict)
    assert _require(scheduler, "_max_t", "ray", "sweep/schedule.py (GroupScheduler)") == 10


def test_ray_optuna_searcher_study():
    """sweep/search.py reads each group's Optuna study from Ray's OptunaSearch."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, metric="val_acc", mode="max")
    study = _require(searcher, "_ot_study", "ray", "sweep/search.py (GroupSearcher.study)")
    assert isinstance(study, optuna.Study)


def test_mlflow_dataset_entity_used_for_trial_inputs():
    """sweep/mlflow_inputs.py turns MLflow datasets into entities to log them as each trial's inputs."""
    import mlflow.data
    from mlflow.data.sources import LocalArtifactDatasetSource

    dataset = mlflow.data.from_numpy(np.zeros((3, 2), dtype=np.float32), source=LocalArtifactDatasetSource("/tmp"),
                                     targets=np.zeros(3, dtype=np.int64), name="probe")
    entity = _require(dataset, "_to_mlflow_entity", "mlflow", "sweep/mlflow_inputs.py")()  # type: ignore[operator]
    for field in ("name", "digest", "source_type", "source", "schema", "profile"):
        _require(entity, field, "mlflow", "sweep/mlflow_inputs.py")


def test_torch_module_hook_dicts_cleared_by_the_inconsistency_score():
    """inconsistency.py clears a head copy's hooks (BackPACK's) before torch.func differentiates it."""
    from torch import nn

    head = nn.Linear(2, 1)
    for attribute in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
        hooks = _require(head, attribute, "torch", "inconsistency.py (plain_head)")
        assert hasattr(hooks, "clear"), f"torch {version('torch')}: Module.{attribute} is no longer a dict"


def test_a_missing_private_api_fails_naming_it():
    with pytest.raises(pytest.fail.Exception, match=r"ray \S+: object\._local_tuner is gone; sweep/runner.py"):
        _require(object(), "_local_tuner", "ray", "sweep/runner.py")
