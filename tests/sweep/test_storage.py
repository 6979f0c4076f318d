"""Sweeps stored under a URI (s3://, gs://; file:// here, offline) rather than a local directory."""

from __future__ import annotations

import os
from pathlib import Path

from fishr_tune.sweep.runner import SUMMARY_FILE, run_sweep
from fishr_tune.sweep.spec import build_spec
from fishr_tune.sweep.storage import LOCAL_STATE_ROOT, SweepLocation


def test_local_storage_keeps_everything_in_the_experiment_directory(tmp_path) -> None:
    location = SweepLocation.of(str(tmp_path / "sweeps"), "qs")
    assert location.uri == f"{tmp_path / 'sweeps'}/qs" and not location.remote
    assert location.journal_dir == tmp_path / "sweeps" / "qs" / "mlflow"
    location.write_text("a.json", "{}")
    assert location.read_text("a.json") == "{}" and location.read_text("missing") is None


def test_uri_storage_reads_and_writes_through_pyarrow_and_journals_locally(tmp_path) -> None:
    location = SweepLocation.of(f"file://{tmp_path}/bucket/", "qs")
    assert location.uri == f"file://{tmp_path}/bucket/qs"
    location.write_text("summary.json", '{"trials": 2}')
    assert (tmp_path / "bucket" / "qs" / "summary.json").read_text() == '{"trials": 2}'
    remote = SweepLocation.of("s3://my-bucket/fishr-tune/sweeps", "pacs")
    assert remote.remote and remote.uri == "s3://my-bucket/fishr-tune/sweeps/pacs"
    assert remote.journal_dir.parent.parent == LOCAL_STATE_ROOT and remote.journal_dir.name == "mlflow"
    assert SweepLocation.of("s3://other/x", "pacs").journal_dir != remote.journal_dir


def test_a_sweep_runs_and_resumes_on_uri_storage(local_ray, tmp_path, sqlite_uri) -> None:
    values = {
        "name": "uri", "dataset": "ColoredMNIST-IRM", "algorithms": ["ERM"], "test_envs": [2], "trial_seeds": [0],
        "steps": 40, "checkpoint_freq": 20, "hyperparameters": {"batch_size": 32, "hidden_dim": 32},
        "search": {"algorithm": "random", "num_samples": 2, "seed": 0}, "scheduler": "none", "resources": {"cpu": 1},
        "storage_path": f"file://{tmp_path}/bucket", "tracking_uri": sqlite_uri,
    }
    summary = run_sweep(build_spec(values, "uri.yaml"), stream=open(os.devnull, "w"))
    assert summary.finished == 2 and summary.mlflow_pending == 0
    assert summary.experiment_dir == f"file://{tmp_path}/bucket/uri"
    assert (tmp_path / "bucket" / "uri" / SUMMARY_FILE).exists()
    assert len(list(Path(tmp_path / "bucket" / "uri").glob("*/result.json"))) == 2
    again = run_sweep(build_spec(values, "uri.yaml"), resume=True, stream=open(os.devnull, "w"))
    assert again.finished == 2 and again.steps_trained == summary.steps_trained
