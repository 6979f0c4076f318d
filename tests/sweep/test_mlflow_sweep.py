"""A sweep mirrored into a real MLflow server: one parent run, one child per trial, every point Ray recorded,
through a server outage mid-sweep and through trial retries."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray import cloudpickle, tune
from ray.tune import Callback

from fishr_tune import records
from fishr_tune.sweep.runner import run_sweep
from fishr_tune.sweep.spec import build_spec, load_spec
from fishr_tune.sweep.storage import JOURNAL_DIR
from fishr_tune.sweep.trainable import run_trial
from fishr_tune.tracking.journal import JOURNAL_FILE, SENT_FILE
from fishr_tune.tracking.mlflow_store import KEY_TAG

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def sweep_spec(values: dict[str, Any], name: str, uri: str):
    return build_spec({**values, "name": name, "tracking_uri": uri}, "test.yaml")


def ray_points(experiment_dir: Path) -> dict[str, dict[int, float]]:
    """Every record Ray stored, per trial: step -> env0_in_acc."""
    points = {}
    for result_file in experiment_dir.glob("*/result.json"):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        points[rows[0]["trial_id"]] = {r[records.STEP]: r["env0_in_acc"] for r in rows if "env0_in_acc" in r}
    return points


def mlflow_runs(uri: str, name: str) -> tuple[Any, list[Any]]:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    parents = [r for r in runs if r.data.tags.get(records.KIND_TAG) == records.KIND_SWEEP]
    children = [r for r in runs if r.data.tags.get(records.KIND_TAG) == records.KIND_TRIAL]
    assert len(parents) == 1 and len(parents) + len(children) == len(runs)
    return parents[0], children


def assert_mirrors_ray(uri: str, name: str, experiment_dir: Path) -> list[Any]:
    client = MlflowClient(uri)
    parent, children = mlflow_runs(uri, name)
    expected = ray_points(experiment_dir)
    assert sorted(c.data.tags["ray_trial_id"] for c in children) == sorted(expected)
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        history = client.get_metric_history(child.info.run_id, "env0_in_acc")
        steps = [m.step for m in history]
        assert len(steps) == len(set(steps)), "a metric point was logged twice"
        assert {m.step: m.value for m in history} == expected[child.data.tags["ray_trial_id"]]
        assert {"env2_out_acc", "val_acc", "loss", "step_time"} <= set(child.data.metrics)
    return children


def test_sweep_gives_one_parent_and_one_child_per_trial_with_every_point(local_ray, mlflow_server, tiny_sweep, tmp_path) -> None:
    # a real search-space file, as `fishr-tune sweep FILE` reads it: the parent run keeps it as an artifact
    source = tmp_path / "mirror.yaml"
    source.write_text(yaml.safe_dump({**tiny_sweep, "name": "mirror", "tracking_uri": mlflow_server.uri}, sort_keys=False))
    summary = run_sweep(load_spec(source), stream=open(os.devnull, "w"))
    assert summary.mlflow_pending == 0 and summary.finished == 4
    experiment_id = MlflowClient(mlflow_server.uri).get_experiment_by_name("mirror").experiment_id
    assert summary.mlflow_view == (f"{mlflow_server.uri}/#/experiments/{experiment_id}/runs"
                                   "?viewStateShareKey=fishr-tune-trials&workflowType=machine_learning")
    assert any(summary.mlflow_view in line for line in summary.lines())
    children = assert_mirrors_ray(mlflow_server.uri, "mirror", Path(summary.experiment_dir))
    client = MlflowClient(mlflow_server.uri)
    fishr = next(c for c in children if c.data.tags["algorithm"] == "Fishr")
    assert {"lambda", "ema", "lr"} <= set(fishr.data.params)
    assert fishr.data.tags["env2"] == "-90%" and fishr.data.tags["status"] == "finished"
    assert fishr.info.run_name == f"Fishr te2 ts0 {fishr.data.tags['ray_trial_id']}"  # as the summary and analyze print it
    for child in children:  # one path for every trial, so MLflow's compare view shows the plots side by side
        assert [(a.path, a.is_dir) for a in client.list_artifacts(child.info.run_id)] == [("accuracy.png", False)]
        assert len(client.get_run(child.info.run_id).inputs.dataset_inputs) == 6  # 3 environments x (in, out)
    # the training losses at every checkpoint: nll for every algorithm, the penalty for Fishr (ERM has none)
    checkpoints = [0, 40, 80, 119]
    for child in children:
        names = [records.NLL, records.PENALTY] if child.data.tags["algorithm"] == "Fishr" else [records.NLL]
        for name in names:
            history = client.get_metric_history(child.info.run_id, name)
            assert sorted(m.step for m in history) == checkpoints, (child.data.tags["algorithm"], name)
            assert all(math.isfinite(m.value) for m in history)
    erm = next(c for c in children if c.data.tags["algorithm"] == "ERM")
    assert records.PENALTY not in erm.data.metrics
    assert not any(records.INCONSISTENCY in c.data.metrics for c in children)  # only when the sweep asks for it
    # system metrics only when asked (this file does not ask): the not-asked case of the test below
    assert not any(k.startswith("system/") for c in children for k in c.data.metrics)
    parent, _ = mlflow_runs(mlflow_server.uri, "mirror")
    assert parent.data.metrics["finished"] == 4 and parent.data.params["dataset"] == "ColoredMNIST-IRM"
    # the settings as the sweep used them: the dataset's label noise, absolute storage path, the tracking URI
    assert parent.data.params["label_noise"] == "0.25" and parent.data.params["tracking_uri"] == mlflow_server.uri
    assert parent.data.params["storage_path"] == tiny_sweep["storage_path"] and Path(tiny_sweep["storage_path"]).is_absolute()
    assert "embedded" in parent.data.params["data_source"]
    selected = client.get_run(parent.data.tags["selected_run.Fishr_te2_ts0"])
    assert selected.data.tags["algorithm"] == "Fishr"
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["mirror.yaml"]
    downloaded = client.download_artifacts(parent.info.run_id, "mirror.yaml", str(tmp_path / "downloaded"))
    assert Path(downloaded).read_text() == source.read_text()


# not asked: no system metrics, asserted on the sweep of test_sweep_gives_one_parent_and_one_child_per_trial_with_every_point
@pytest.mark.parametrize("system_metrics", [True], ids=["asked"])
def test_system_metrics_reach_every_trial_run_only_when_asked(local_ray, mlflow_server, tiny_sweep, system_metrics) -> None:
    """`system_metrics: true` gives every trial run MLflow's `system/...` metrics at each checkpoint; without it, none."""
    import psutil

    name = f"system-{'on' if system_metrics else 'off'}"
    values = {**tiny_sweep, "algorithms": ["ERM"], "per_algorithm": {}, "steps": 80, "system_metrics": system_metrics}
    summary = run_sweep(sweep_spec(values, name, mlflow_server.uri), stream=open(os.devnull, "w"))
    assert summary.finished == 2 and summary.mlflow_pending == 0
    client = MlflowClient(mlflow_server.uri)
    _, children = mlflow_runs(mlflow_server.uri, name)
    assert len(children) == 2
    for child in children:
        system = sorted(k for k in child.data.metrics if k.startswith("system/"))
        if not system_metrics:
            assert system == []
            continue
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(system)
        checkpoints = sorted(m.step for m in client.get_metric_history(child.info.run_id, records.VAL_ACC))
        for key, upper in (("system/cpu_utilization_percentage", 100.0),
                           ("system/system_memory_usage_megabytes", psutil.virtual_memory().total / 1e6)):
            history = client.get_metric_history(child.info.run_id, key)
            assert sorted(m.step for m in history) == checkpoints  # one sample average per record, at its step
            assert all(0.0 <= m.value <= upper for m in history)


def journal_pending(journal_dir: Path) -> int:
    """Operations journaled but not sent, read from the journal's files (without opening a journal on them)."""
    journaled = (journal_dir / JOURNAL_FILE).read_text().splitlines()
    sent = journal_dir / SENT_FILE
    return len(journaled) - (int(sent.read_text() or 0) if sent.exists() else 0)


class ServerOutage(Callback):
    """Stops the server at the first record and starts it again at the sixth (of 16), waiting until it answers:
    the server is back while the sweep still has trials to run."""

    RESTART_AT = 6

    def __init__(self, server: Any, journal_dir: Path):
        self.server = server
        self.journal_dir = journal_dir
        self.results = 0
        self.pending_when_restarted: int | None = None
        self.restarted_while_running = False

    def __getstate__(self) -> dict[str, Any]:
        """Tune saves its callbacks with the experiment; the server handle stays in this process."""
        return {"results": self.results}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.results += 1
        if self.results == 1:
            self.server.stop()
        elif self.results == self.RESTART_AT:
            self.pending_when_restarted = journal_pending(self.journal_dir)
            self.server.start()
            self.restarted_while_running = any(t.status in ("RUNNING", "PENDING") for t in trials)


def test_server_outage_mid_sweep_loses_and_duplicates_nothing(local_ray, mlflow_server, tiny_sweep) -> None:
    spec = sweep_spec(tiny_sweep, "outage", mlflow_server.uri)
    journal_dir = Path(tiny_sweep["storage_path"]).resolve() / "outage" / JOURNAL_DIR
    outage = ServerOutage(mlflow_server, journal_dir)
    summary = run_sweep(spec, callbacks=[outage], stream=open(os.devnull, "w"))
    assert summary.finished == 4 and outage.results == 16
    # the outage held operations back, and the server was back before the sweep ended ...
    assert outage.pending_when_restarted and outage.pending_when_restarted > 0
    assert outage.restarted_while_running
    # ... so the sweep itself delivered everything: nothing left for `fishr-tune mlflow-sync`
    assert summary.mlflow_pending == 0 and summary.mlflow_error is None
    assert summary.mlflow_journal == str(journal_dir) and journal_pending(journal_dir) == 0
    assert not any("mlflow-sync" in line for line in summary.lines())
    assert_mirrors_ray(mlflow_server.uri, "outage", Path(summary.experiment_dir))


def crash_once(config: dict[str, Any], dataset_refs: Any, run: Any) -> None:
    marker = Path(os.environ["FISHR_TUNE_TEST_FAULTS"]) / f"mlflow-{tune.get_context().get_trial_id()}"

    def after_report(steps_trained: int) -> None:
        if steps_trained >= 41 and not marker.exists():
            marker.write_text("crashed")
            raise RuntimeError("injected crash")

    run_trial(config, dataset_refs, run, after_report=after_report)


# Slow: a third Ray sweep in this file (~10 s). The default suite keeps the behaviour in tests/sweep/test_runner.py::
# test_crashed_trials_resume_from_their_checkpoint_and_divergence_fails_one_trial (every trial crashes once: one MLflow
# run per trial, its status, each checkpoint's metrics once) and tests/test_tracking.py::
# test_a_retried_trial_continues_its_own_run (the journal's retry); the server path by the outage test above.
@pytest.mark.slow
def test_a_retried_trial_keeps_one_run(local_ray, mlflow_server, tiny_sweep) -> None:
    uri = mlflow_server.uri
    spec = sweep_spec({**tiny_sweep, "algorithms": ["ERM"], "per_algorithm": {}}, "retry", uri)
    summary = run_sweep(spec, trainable=crash_once, stream=open(os.devnull, "w"))
    assert summary.finished == 2
    assert len(list(local_ray.glob("mlflow-*"))) == 2  # both trials did crash once
    children = assert_mirrors_ray(uri, "retry", Path(summary.experiment_dir))
    assert len({c.data.tags[KEY_TAG] for c in children}) == len(children) == 2
    for child in children:
        history = MlflowClient(uri).get_metric_history(child.info.run_id, "val_acc")
        assert sorted(m.step for m in history) == [0, 40, 80, 119]
        assert child.info.status == "FINISHED" and child.data.tags["status"] == "finished"


@pytest.mark.parametrize("uri", ["sqlite:///relative.db"])
def test_relative_sqlite_uri_is_made_absolute(uri: str, tmp_path, monkeypatch) -> None:
    from fishr_tune.tracking import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(uri) == f"sqlite:///{tmp_path / 'relative.db'}"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


# ---- a driver that died before Tune saved its state: the trials Tune re-creates keep their configuration's run ----


def fake_trial(trial_id: str, sample_index: int, status: str = "RUNNING", last_step: int | None = None) -> Any:
    from types import SimpleNamespace

    config = {"group": "ERM/te2/ts0", "dataset": "ColoredMNIST-IRM", "algorithm": "ERM", "test_envs": [2],
              "trial_seed": 0, "sample_index": sample_index, "seed": 100 + sample_index, "hparams": {"lr": 0.001 * (1 + sample_index)}}
    last = None if last_step is None else {records.STEP: last_step, "val_acc": 0.5}
    return SimpleNamespace(trial_id=trial_id, config=config, status=status, last_result=last)


def report(callback: Any, trial: Any, step: int) -> None:
    callback.on_trial_result(0, [], trial, {records.STEP: step, "env0_in_acc": step / 1000, "env0_out_acc": 0.5,
                                            "val_acc": step / 1000, "loss": 0.7, "timestamp": 1_000 + step})


def test_resume_re_adopts_or_closes_the_runs_of_trials_tune_lost(tiny_sweep, tmp_path) -> None:
    from fishr_tune.sweep.tracking_callback import TrackingCallback, open_journal

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = sweep_spec(tiny_sweep, "lost", uri)
    journal_dir = tmp_path / "journal"
    first = TrackingCallback(spec, open_journal(spec, journal_dir))
    first.start_sweep_run()
    kept, recreated, gone = fake_trial("kept_00001", 0), fake_trial("lost_00002", 1), fake_trial("gone_00003", 2)
    for trial in (kept, recreated, gone):
        first.on_trial_start(0, [], trial)
        report(first, trial, 0)
    report(first, recreated, 40)
    assert first.journal.flush(force=True) == 0  # then the driver is SIGKILLed; Tune's saved state names only `kept`

    second = TrackingCallback(spec, open_journal(spec, journal_dir))
    second.on_step_begin(0, [kept])
    again = fake_trial("anew_00004", 1, status="RUNNING")  # the same configuration as `recreated`, a new trial id
    second.on_trial_start(0, [kept, again], again)
    for step in (0, 40, 80, 119):  # it trains from step 0 again: the records already logged are not logged twice
        report(second, again, step)
    for trial in (kept, again):
        trial.status, trial.last_result = "TERMINATED", {records.STEP: 119, "val_acc": 0.5}
    report(second, kept, 119)
    second.on_trial_complete(0, [kept, again], again)
    second.on_trial_complete(0, [kept, again], kept)
    second.wait_for_closing_runs()  # runs are closed off Tune's loop, as the sweep's end waits for them
    assert second.journal.flush(force=True) == 0

    client = MlflowClient(uri)
    _, children = mlflow_runs(uri, "lost")
    by_trial = {run.data.tags["ray_trial_id"]: run for run in children}
    assert sorted(by_trial) == ["anew_00004", "gone_00003", "kept_00001"]  # one run per configuration
    assert {t: r.info.status for t, r in by_trial.items()} == {"anew_00004": "FINISHED", "gone_00003": "KILLED",
                                                              "kept_00001": "FINISHED"}
    adopted = by_trial["anew_00004"]
    assert adopted.data.params["lr"] == "0.002" and "continues the run of Ray trial lost_00002" in adopted.data.tags["fishr_tune.note"]
    assert [m.step for m in client.get_metric_history(adopted.info.run_id, "val_acc")] == [0, 40, 80, 119]
    assert "no longer knows this trial" in by_trial["gone_00003"].data.tags["fishr_tune.note"]

    third = TrackingCallback(spec, open_journal(spec, journal_dir))  # the journal alone rebuilds who owns what
    assert third.logged["anew_00004"] == {0, 40, 80, 119} and third.adoptable == {
        third.digests["gone_00003"]: "gone_00003"}


DRIVER = '''
import json, os, signal, sys
from ray import tune
from ray.tune.execution.tune_controller import TuneController
from fishr_tune.sweep.runner import run_sweep
from fishr_tune.sweep.spec import build_spec

values, mode = json.loads(sys.argv[1]), sys.argv[2]
callbacks = []
if mode == "kill":
    original = TuneController.checkpoint

    def checkpoint(self, force=False, wait=False):  # Tune's saved state never gets to name a third trial
        if len(self._trials) <= 2:
            original(self, force=force, wait=wait)

    TuneController.checkpoint = checkpoint

    class KillDriver(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if len(trials) >= 3 and trial.trial_id == trials[2].trial_id and result.get("step") == 40:
                os.kill(os.getpid(), signal.SIGKILL)

    callbacks = [KillDriver()]
summary = run_sweep(build_spec(values, "test.yaml"), resume=mode == "resume", num_cpus=2, callbacks=callbacks,
                    stream=open(os.devnull, "w"))
print(json.dumps({"trials": summary.trials, "unfinished": summary.unfinished, "finished": summary.finished,
                  "stopped_early": summary.stopped_early, "failures": summary.failures}))
'''


@pytest.mark.slow
def test_driver_sigkill_then_resume_leaves_one_run_per_configuration_and_none_running(tiny_sweep, tmp_path) -> None:
    import subprocess
    import tempfile

    values = {**tiny_sweep, "name": "killed"}
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rk", dir="/tmp"), "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    env.pop("RAY_ADDRESS", None)

    def drive(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), json.dumps(values), mode], env=env, capture_output=True,
                              text=True, timeout=900)

    killed = drive("kill")
    assert killed.returncode == -9, killed.stderr[-3000:]
    uri = values["tracking_uri"]
    journal = records.read_lines(Path(values["storage_path"]) / "killed" / JOURNAL_DIR / JOURNAL_FILE)
    started = [op["key"] for op in journal if op["op"] == "start" and op["key"] != "sweep"]
    assert len(started) == 3 and started[2] not in {op["key"] for op in journal if op["op"] == "end"}, started
    resumed = drive("resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    outcome = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert (outcome["trials"], outcome["unfinished"], outcome["failures"]) == (4, 0, {}), outcome
    client = MlflowClient(uri)
    parent, children = mlflow_runs(uri, "killed")
    assert len(children) == 4, [(c.data.tags["ray_trial_id"], c.info.status) for c in children]
    assert len({c.data.tags["fishr_tune.config"] for c in children}) == 4  # one run per configuration
    assert [c.info.status for c in children] == ["FINISHED"] * 4 and parent.info.status == "FINISHED"
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, records.VAL_ACC)]
        assert steps == sorted(set(steps)) and steps[0] == 0, (child.data.tags["ray_trial_id"], steps, outcome)
    assert any("continues the run of Ray trial" in c.data.tags.get("fishr_tune.note", "") for c in children)
