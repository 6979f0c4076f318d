"""A sweep saved by a fishr-tune whose classes have moved is refused on --resume before Ray starts, naming them."""

from __future__ import annotations

import pickle

import pytest

from fishr_tune.errors import ConfigError
from fishr_tune.sweep.saved_state import check_restorable, missing_reference, pickled_globals
from fishr_tune.sweep.schedule import GroupScheduler
from fishr_tune.sweep.storage import SweepLocation


def _stack_global(module: str, name: str) -> bytes:
    """A protocol-4 pickle of the class `module.name`, written by hand: pickle refuses to dump a class that is gone."""
    def text(value: str) -> bytes:
        raw = value.encode()
        return b"\x8c" + bytes([len(raw)]) + raw + b"\x94"
    return b"\x80\x04" + text(module) + text(name) + b"\x93\x94."


def test_references_are_read_from_both_global_opcodes_and_through_the_memo() -> None:
    current = pickle.dumps({"scheduler": GroupScheduler, "again": GroupScheduler, "n": 3}, protocol=4)
    assert ("fishr_tune.sweep.schedule", "GroupScheduler") in set(pickled_globals(current))
    old_style = b"\x80\x02cfishr_tune.sweep.search\nGroupScheduler\nq\x00."
    assert list(pickled_globals(old_style)) == [("fishr_tune.sweep.search", "GroupScheduler")]
    assert list(pickled_globals(_stack_global("fishr_tune.sweep.mlflow_callback", "MlflowCallback"))) == [
        ("fishr_tune.sweep.mlflow_callback", "MlflowCallback")]


def test_only_this_packages_unresolvable_names_count_as_missing() -> None:
    assert missing_reference("fishr_tune.sweep.search", "GroupScheduler")  # the class moved to sweep.schedule
    assert missing_reference("fishr_tune.sweep.mlflow_callback", "MlflowCallback")  # the module is gone
    assert not missing_reference("fishr_tune.sweep.schedule", "GroupScheduler")
    assert not missing_reference("fishr_tune.sweep.trial", "TrialSpec.from_config")  # a nested qualified name
    assert not missing_reference("some_other_package.gone", "Thing")  # Tune's own restore judges the rest


def test_resume_of_a_sweep_saved_with_moved_classes_names_them(tmp_path) -> None:
    location = SweepLocation.of(str(tmp_path), "old")
    location.write_text("sweep_spec.yaml", "name: old\n")
    (tmp_path / "old" / "tuner.pkl").write_bytes(_stack_global("fishr_tune.sweep.search", "GroupScheduler"))
    (tmp_path / "old" / "searcher-state-1.pkl").write_bytes(pickle.dumps(GroupScheduler, protocol=4))
    with pytest.raises(ConfigError) as refused:
        check_restorable(location)
    message = str(refused.value)
    assert "tuner.pkl refers to fishr_tune.sweep.search.GroupScheduler" in message
    assert "searcher-state" not in message and str(tmp_path / "old") in message


def test_a_sweep_saved_by_this_version_passes_and_a_torn_state_file_is_named(tmp_path) -> None:
    location = SweepLocation.of(str(tmp_path), "new")
    location.write_text("sweep_spec.yaml", "name: new\n")
    state = pickle.dumps({"scheduler": GroupScheduler}, protocol=5)
    (tmp_path / "new" / "tuner.pkl").write_bytes(state)
    check_restorable(location)
    (tmp_path / "new" / "tuner.pkl").write_bytes(state[: len(state) // 2])
    with pytest.raises(ConfigError, match="tuner.pkl is not a readable Tune state file"):
        check_restorable(location)


def test_resume_checks_the_saved_state_before_ray_starts(tmp_path, monkeypatch) -> None:
    import ray
    import yaml

    from fishr_tune.sweep.runner import SPEC_FILE, _spec_snapshot, run_sweep
    from fishr_tune.sweep.spec import build_spec

    spec = build_spec({"name": "old", "dataset": "ColoredMNIST-IRM", "algorithms": ["ERM"], "test_envs": [2],
                       "steps": 20, "checkpoint_freq": 10, "scheduler": "none", "storage_path": str(tmp_path / "sweeps"),
                       "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "old.yaml")
    location = SweepLocation.of(spec.settings.storage_path, spec.name)
    location.write_text(SPEC_FILE, yaml.safe_dump(_spec_snapshot(spec), sort_keys=False))
    (tmp_path / "sweeps" / "old" / "tuner.pkl").write_bytes(_stack_global("fishr_tune.sweep.search", "GroupScheduler"))
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started before the saved state was checked"))
    with pytest.raises(ConfigError, match="fishr_tune.sweep.search.GroupScheduler, which this version does not have"):
        run_sweep(spec, resume=True)
    assert not (tmp_path / "mlflow.db").exists()  # the sweep's MLflow run was not reopened either
