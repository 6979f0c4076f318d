"""Sweeps on a real Ray: crash retries from checkpoints, divergence, Ctrl-C and --resume, summaries (a local Ray
with 2 CPUs); and, marked slow, a genuine two-node cluster on this machine that loses its worker node mid-sweep."""

from __future__ import annotations

import copy
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient
from ray import cloudpickle, tune

from fishr_tune import records
from fishr_tune.analysis.readers import gather_files
from fishr_tune.errors import ConfigError
from fishr_tune.sweep.runner import SPEC_FILE, SUMMARY_FILE, run_sweep
from fishr_tune.sweep.schedule import SCHEDULER_METRIC
from fishr_tune.sweep.spec import build_spec
from fishr_tune.sweep.trainable import NODE_ID, START_STEP, STEPS_TRAINED, run_trial
from fishr_tune.training import NonFiniteLossError

# The fault-injecting trainables below run in Ray workers, which cannot import this test module by name.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

FAULTS_ENV = "FISHR_TUNE_TEST_FAULTS"
BASE: dict[str, Any] = {
    "name": "runner",
    "dataset": "ColoredMNIST-IRM",
    "algorithms": ["ERM"],
    "test_envs": [2],
    "trial_seeds": [0],
    "steps": 160,
    "checkpoint_freq": 40,
    "hyperparameters": {"lr": {"loguniform": [1.0e-3, 3.0e-3]}, "batch_size": 32, "hidden_dim": 64},
    "search": {"algorithm": "tpe", "num_samples": 2, "seed": 0},
    "scheduler": "none",
    "resources": {"cpu": 1},
    "max_failures": 1,
}
ALL_STEPS = [0, 40, 80, 120, 159]


def spec_for(tmp_path: Path, **changes: Any):
    values = copy.deepcopy(BASE)
    values.update(changes)
    values["storage_path"] = str(tmp_path / "sweeps")
    values.setdefault("tracking_uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return build_spec(values, "test.yaml")


def trial_results(experiment_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every result Tune wrote, per trial id (result.json is appended to across retries and resumes)."""
    found = {}
    for result_file in experiment_dir.glob("*/result.json"):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if rows:
            found[rows[0]["trial_id"]] = rows
    return found


def crash_once_then_diverge(config: dict[str, Any], dataset_refs: Any, run: Any) -> None:
    """Every trial crashes once after its 2nd record; the second trial of the group then diverges after step 80."""
    faults = Path(os.environ[FAULTS_ENV])
    trial_id = tune.get_context().get_trial_id()
    attempts = faults / f"{trial_id}.attempts"
    attempt = len(attempts.read_text().splitlines()) if attempts.exists() else 0
    with open(attempts, "a") as handle:
        handle.write(f"{attempt}\n")
    diverging = config["sample_index"] == 1

    def after_report(steps_trained: int) -> None:
        if attempt == 0 and steps_trained >= 41:
            raise RuntimeError("injected crash (a lost worker, an OOM kill...)")
        if diverging and steps_trained >= 81:
            raise NonFiniteLossError("loss became nan at step 80")

    run_trial(config, dataset_refs, run, after_report=after_report)


def test_crashed_trials_resume_from_their_checkpoint_and_divergence_fails_one_trial(local_ray: Path, tmp_path: Path,
                                                                                   sqlite_uri: str) -> None:
    spec = spec_for(tmp_path, tracking_uri=sqlite_uri)
    summary = run_sweep(spec, trainable=crash_once_then_diverge, stream=open(os.devnull, "w"))
    results = trial_results(Path(summary.experiment_dir))
    assert len(results) == 2
    # Every trial crashed once (two attempts) ...
    assert sorted(len(p.read_text().splitlines()) for p in local_ray.glob("*.attempts")) == [2, 2]
    for rows in results.values():
        steps = [row[records.STEP] for row in rows]
        # ... and continued where its checkpoint stopped: no step trained twice, the retry starting at 41 (not 0).
        assert steps == sorted(set(steps)), steps
        assert rows[0][START_STEP] == 0 and rows[-1][START_STEP] == 41
        if rows[-1].get("failure"):  # the diverged step is reported after the last record
            assert steps == [0, 40, 80, 81] and "nan" in rows[-1]["failure"]
        else:
            assert steps == ALL_STEPS
    assert (summary.finished, summary.failed, summary.stopped_early, summary.unfinished) == (1, 1, 0, 0)
    assert list(summary.failures.values()) == ["non-finite loss: loss became nan at step 80"]
    assert summary.steps_trained == 160 + 81 and summary.steps_without_early_stopping == 2 * 160
    saved = json.loads((Path(summary.experiment_dir) / SUMMARY_FILE).read_text())
    assert saved["failed"] == 1 and saved["finished"] == 1
    assert saved["groups"]["ERM/te2/ts0"]["best_val_acc"] > 0.5
    # MLflow: the diverged trial's run failed with the reason, the other finished; the crashes made no extra runs
    client = MlflowClient(spec.settings.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("runner").experiment_id],
                              filter_string="tags.`fishr_tune.kind` = 'trial'")
    assert sorted(run.data.tags["ray_trial_id"] for run in runs) == sorted(results)
    outcome = {(run.data.tags["status"], run.info.status) for run in runs}
    assert outcome == {("failed: non-finite loss: loss became nan at step 80", "FAILED"), ("finished", "FINISHED")}
    for run in runs:
        diverged = run.data.tags["status"].startswith("failed")
        expected_steps = [0, 40, 80] if diverged else ALL_STEPS  # the diverged step has no accuracies to log
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, records.VAL_ACC)) == expected_steps
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, records.NLL)) == expected_steps


def crash_once_after_step_40(config: dict[str, Any], dataset_refs: Any, run: Any) -> None:
    marker = Path(os.environ[FAULTS_ENV]) / f"sync-{tune.get_context().get_trial_id()}"

    def after_report(steps_trained: int) -> None:
        if steps_trained >= 41 and not marker.exists():
            marker.write_text("crashed")
            raise RuntimeError("injected crash")

    run_trial(config, dataset_refs, run, after_report=after_report)


class StaleStorageAtRetry(tune.Callback):
    """Leaves the sweep's storage with the trial's result.json as a periodic sync that missed the last record
    leaves it (Tune syncs the driver's trial files in the background, every few checkpoints): the state in which
    a retried trial's loggers copy it back over the driver's complete one."""

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        storage = trial.storage
        lines = Path(trial.local_path, "result.json").read_text().splitlines(keepends=True)
        assert json.loads(lines[-1])[records.STEP] == 40
        storage.storage_filesystem.create_dir(storage.trial_fs_path, recursive=True)
        with storage.storage_filesystem.open_output_stream(f"{storage.trial_fs_path}/result.json") as out:
            out.write("".join(lines[:-1]).encode())


def test_a_retried_trial_keeps_every_record_logged_before_its_crash(local_ray: Path, tmp_path: Path, sqlite_uri: str) -> None:
    """A retried trial restarts from its checkpoint, and Tune's loggers then copy its result.json back from the
    storage, which may be older than the driver's: the records logged since the last sync must not be lost."""
    spec = spec_for(tmp_path, name="retry_logs", search={"num_samples": 1, "seed": 0}, tracking_uri=sqlite_uri)
    summary = run_sweep(spec, trainable=crash_once_after_step_40, callbacks=[StaleStorageAtRetry()],
                        stream=open(os.devnull, "w"))
    assert len(list(local_ray.glob("sync-*"))) == 1  # the trial did crash
    (rows,) = trial_results(Path(summary.experiment_dir)).values()
    assert [row[records.STEP] for row in rows] == ALL_STEPS
    assert rows[-1][START_STEP] == 41  # continued from the checkpoint of step 40
    table = gather_files(summary.experiment_dir)
    assert table["step"].tolist() == ALL_STEPS


# ASHA, two groups, one trial at a time (a trial takes both CPUs) so each group's rungs see its trials in the
# order they were suggested. lr is a choice between a working rate and one that leaves the model at its
# initialization; with search seed 4 each group samples [good, bad, good] (asserted below), so each group's bad
# trial reaches the first rung after a good one recorded ~0.87 there, is below the cutoff and must be stopped.
# One rung (reduction factor 8: the next would be at 160): at a later rung two good trials tie on val_acc, and ASHA
# ranks by the score that breaks ties by validation loss, so the second good one could be stopped there.
ASHA_SWEEP: dict[str, Any] = {
    "name": "asha",
    "algorithms": ["ERM", "Fishr"],
    "steps": 120,
    "checkpoint_freq": 20,
    "hyperparameters": {"lr": {"choice": [3.0e-3, 1.0e-7]}, "batch_size": 32, "hidden_dim": 64},
    "per_algorithm": {"Fishr": {"lambda": 100.0, "penalty_anneal_iters": 40}},
    "search": {"algorithm": "tpe", "num_samples": 3, "seed": 4},
    "scheduler": {"type": "asha", "grace_period": 20, "reduction_factor": 8},
    "resources": {"cpu": 2},
}
GOOD_LR, BAD_LR = 3.0e-3, 1.0e-7


def asha_rungs(grace_period: int, reduction_factor: float, steps: int) -> set[float]:
    """The steps where ASHA may stop a trial, as GroupScheduler's ASHA defines them: grace_period * rf**k < steps."""
    rungs, k = set(), 0
    while grace_period * reduction_factor**k < steps:
        rungs.add(grace_period * reduction_factor**k)
        k += 1
    return rungs


def test_asha_stops_the_bad_trial_of_each_group_at_a_rung(local_ray: Path, tmp_path: Path, sqlite_uri: str) -> None:
    import io

    spec = spec_for(tmp_path, **ASHA_SWEEP, tracking_uri=sqlite_uri)
    display = io.StringIO()
    summary = run_sweep(spec, stream=display)
    results = trial_results(Path(summary.experiment_dir))
    assert len(results) == 6
    scheduler = spec.settings.scheduler
    rungs = asha_rungs(scheduler.grace_period, scheduler.reduction_factor, spec.settings.steps)
    assert rungs == {20}
    lrs: dict[str, list[float]] = {}
    stopped: dict[str, tuple[str, int]] = {}
    configs = {json.loads((f.parent / "result.json").read_text().splitlines()[0])["trial_id"]: json.loads(f.read_text())
               for f in Path(summary.experiment_dir).glob("*/params.json")}
    # one trial at a time: a group's trials ran in the order they were suggested (sample_index)
    for trial_id, rows in sorted(results.items(), key=lambda item: configs[item[0]]["sample_index"]):
        group, last = rows[0]["group"], rows[-1]
        assert configs[trial_id]["group"] == group
        lrs.setdefault(group, []).append(last["hparams.lr"])
        if last[records.STEP] < 119:
            stopped[trial_id] = (group, last[records.STEP])
            assert last[records.STEP] in rungs, (trial_id, last[records.STEP])
            assert SCHEDULER_METRIC in last and records.VAL_NLL in last  # what ASHA ranked it by
            assert last[STEPS_TRAINED] == last[records.STEP] + 1
            assert last["hparams.lr"] == BAD_LR
        else:
            assert [row[records.STEP] for row in rows] == [0, 20, 40, 60, 80, 100, 119]
    # the premise of the test: each group sampled good, bad, good (in the order the trials ran)
    assert lrs == {"ERM/te2/ts0": [GOOD_LR, BAD_LR, GOOD_LR], "Fishr/te2/ts0": [GOOD_LR, BAD_LR, GOOD_LR]}
    # each group's bad trial stopped at the first rung, the others trained to the end
    assert sorted(stopped.values()) == [("ERM/te2/ts0", 20), ("Fishr/te2/ts0", 20)]
    assert (summary.trials, summary.finished, summary.stopped_early, summary.failed, summary.unfinished) == (6, 4, 2, 0, 0)
    for key in ("ERM/te2/ts0", "Fishr/te2/ts0"):
        counts = summary.groups[key]
        assert (counts.finished, counts.stopped_early, counts.failed, counts.running) == (2, 1, 0, 0)
        assert counts.best_hparams["lr"] == GOOD_LR and counts.best_val_acc > 0.8
    assert summary.steps_trained == 4 * 120 + 2 * 21 < summary.steps_without_early_stopping == 6 * 120
    assert summary.lines()[0] == "Sweep asha: 6 trials: 4 finished, 2 stopped early, 0 failed"
    # the display's last lines (one per group, from Tune's own Trial objects) count the stopped trials
    last_lines = display.getvalue().splitlines()[-2:]
    for line, key in zip(last_lines, ("ERM/te2/ts0", "Fishr/te2/ts0")):
        best = f"{summary.groups[key].best_val_acc:.4f}"
        assert line.split("] ", 1)[1] == f"{key}: 0 running, 2 finished, 1 stopped early, 0 failed, best val_acc {best}"
    # MLflow: the child run of a stopped trial says where it stopped
    client = MlflowClient(spec.settings.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("asha").experiment_id],
                              filter_string="tags.`fishr_tune.kind` = 'trial'")
    statuses = {run.data.tags["ray_trial_id"]: (run.data.tags["status"], run.info.status) for run in runs}
    assert len(statuses) == 6
    for trial_id, status in statuses.items():  # stopped runs are KILLED in MLflow, apart from the FINISHED ones
        assert status == ((f"stopped early at step {stopped[trial_id][1]} by ASHA", "KILLED") if trial_id in stopped
                          else ("finished", "FINISHED"))


class InterruptAtAFinalRecord(tune.Callback):
    """Sends this process SIGINT (what Ctrl-C does) when a trial logs its final record after another trial has
    completed: the worst moment, Tune has logged that record but not yet registered the checkpoint with it."""

    def __init__(self, final_step: int):
        self.final_step = final_step
        self.completed = 0
        self.completed_before: set[str] = set()  # trials Tune had completed when the SIGINT was sent
        self.interrupted_trial: str | None = None

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.completed += 1
        if self.interrupted_trial is None:
            self.completed_before.add(trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.completed and self.interrupted_trial is None and result.get(records.STEP) == self.final_step:
            self.interrupted_trial = trial.trial_id
            os.kill(os.getpid(), signal.SIGINT)


def trial_log(trial_id: str) -> Path:
    return Path(os.environ[FAULTS_ENV]) / f"resume-{trial_id}.log"


def logged_trial(config: dict[str, Any], dataset_refs: Any, run: Any) -> None:
    """The real trial, writing "start" when it starts (or restarts) and the steps trained after each report."""
    log = trial_log(tune.get_context().get_trial_id())
    with open(log, "a") as handle:
        handle.write("start\n")

    def after_report(steps_trained: int) -> None:
        with open(log, "a") as handle:
            handle.write(f"{steps_trained}\n")

    run_trial(config, dataset_refs, run, after_report=after_report)


def test_interrupted_sweep_resumes_without_running_any_trial_twice(local_ray: Path, tmp_path: Path, sqlite_uri: str) -> None:
    spec = spec_for(tmp_path, name="resumable", steps=240, trial_seeds=[0, 1], search={"num_samples": 2, "seed": 1},
                    tracking_uri=sqlite_uri)
    interrupt = InterruptAtAFinalRecord(final_step=239)
    first = run_sweep(spec, trainable=logged_trial, callbacks=[interrupt], stream=open(os.devnull, "w"))
    assert first.interrupted and first.finished >= 1, first
    # no scheduler here: every trial Ctrl-C cut off (the one at its final record too) is unfinished, none stopped early
    assert (first.finished, first.stopped_early, first.failed) == (len(interrupt.completed_before), 0, 0), first
    assert first.unfinished == 4 - first.finished
    # the summary file is written once, complete: its MLflow fields are those the sweep returned
    saved = json.loads((Path(first.experiment_dir) / SUMMARY_FILE).read_text())
    assert saved["tracking_uri"] == first.tracking_uri == spec.settings.tracking_uri
    assert saved["mlflow_journal"] == first.mlflow_journal != ""
    assert (saved["unfinished"], saved["stopped_early"]) == (first.unfinished, 0)
    before = trial_results(Path(first.experiment_dir))
    done_before = {t for t, rows in before.items() if rows[-1][records.STEP] == 239}
    completed_before = interrupt.completed_before
    assert completed_before and interrupt.interrupted_trial not in completed_before, (completed_before, interrupt.interrupted_trial)
    assert completed_before <= done_before, (completed_before, done_before)
    every_report = ["start", *(str(step + 1) for step in [0, 40, 80, 120, 160, 200, 239])]
    for trial_id in completed_before:
        assert trial_log(trial_id).read_text().split() == every_report, (trial_id, trial_log(trial_id).read_text().split())

    with pytest.raises(ConfigError, match="already holds sweep 'resumable'; pass --resume"):
        run_sweep(spec)
    with pytest.raises(ConfigError, match="started with different settings \\(steps\\)"):
        run_sweep(spec.with_overrides(steps=300), resume=True)

    second = run_sweep(spec, resume=True, trainable=logged_trial, stream=open(os.devnull, "w"))
    after = trial_results(Path(second.experiment_dir))
    logs = {trial_id: trial_log(trial_id).read_text().split() for trial_id in after}
    for trial_id in completed_before:
        # a trial that had completed was not started again: one start and each step reported once, overall
        assert logs[trial_id] == every_report, (trial_id, logs)
    for trial_id, log in logs.items():
        # no trial started more than twice (once a session); each (re)start reports onwards from where it began
        assert 1 <= log.count("start") <= 2, (trial_id, log)
        for attempt in " ".join(log).split("start"):
            steps = [int(step) for step in attempt.split()]
            assert steps == sorted(set(steps)), (trial_id, log)
        assert sorted({int(step) for step in log if step != "start"}) == [int(s) for s in every_report[1:]], (trial_id, log)
    # the interrupted trial restarted once, from the checkpoint before its final record, and trained only that again
    assert logs[interrupt.interrupted_trial][-2:] == ["start", "240"], logs[interrupt.interrupted_trial]
    assert (second.finished, second.trials, second.unfinished) == (4, 4, 0)
    assert len(after) == 4
    every_step = [0, 40, 80, 120, 160, 200, 239]
    for trial_id, rows in after.items():
        # Tune logs a result before it registers the result's checkpoint: a trial stopped in between resumes from
        # the checkpoint before and logs the records after it again. Exact resume replays the same accuracies.
        accuracies: dict[int, dict[str, float]] = {}
        for row in rows:
            measured = {k: v for k, v in row.items() if k.startswith("env") and k.endswith("_acc")}
            assert accuracies.setdefault(row[records.STEP], measured) == measured, (trial_id, row[records.STEP])
        assert sorted(accuracies) == every_step, trial_id  # nothing lost
        if trial_id in done_before:
            assert rows[:len(before[trial_id])] == before[trial_id]  # nothing rewritten
    replayed = [row[records.STEP] for row in after[interrupt.interrupted_trial][len(before[interrupt.interrupted_trial]):]]
    assert replayed == [239], replayed  # the record whose checkpoint Tune had not registered, trained again
    assert second.steps_trained == 4 * 240 and second.mlflow_pending == 0
    # What a user reads holds every record exactly once: the MLflow runs and `fishr-tune analyze`'s table.
    client = MlflowClient(spec.settings.tracking_uri)
    trial_runs = client.search_runs([client.get_experiment_by_name("resumable").experiment_id],
                                    filter_string="tags.`fishr_tune.kind` = 'trial'")
    assert sorted(run.data.tags["ray_trial_id"] for run in trial_runs) == sorted(after)
    for run in trial_runs:
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, records.VAL_ACC)) == every_step
    table = gather_files(second.experiment_dir)
    assert sorted(table.groupby("run")["step"].apply(list).tolist()) == [every_step] * 4


def test_cli_resume_without_a_sweep_exits_2(tmp_path: Path) -> None:
    values = copy.deepcopy(BASE)
    values["storage_path"] = str(tmp_path)
    values["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    file = tmp_path / "space.yaml"
    file.write_text(yaml.safe_dump(values))
    result = subprocess.run([sys.executable, "-m", "fishr_tune.cli", "sweep", str(file), "--resume"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--resume: no sweep to continue in {tmp_path / 'runner'}" in result.stderr
    assert not (tmp_path / "runner" / SPEC_FILE).exists()


def test_a_bad_data_directory_fails_before_ray_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fishr_tune.sweep import runner

    def no_ray(*args: Any) -> bool:
        raise AssertionError("Ray was started for a sweep whose data cannot be read")

    monkeypatch.setattr(runner, "ensure_ray", no_ray)
    with pytest.raises(ConfigError, match="^test.yaml: .*no_such_dir"):
        run_sweep(spec_for(tmp_path, data_dir=str(tmp_path / "no_such_dir")))
    assert not (tmp_path / "sweeps" / "runner").exists()


# ---- a genuine two-node cluster (slow: pytest -m slow tests/sweep/test_runner.py) ----

RAY = str(Path(sys.executable).with_name("ray"))
CLUSTER_SPEC: dict[str, Any] = {
    "name": "two_nodes",
    "dataset": "ColoredMNIST-IRM",
    "algorithms": ["ERM"],
    "test_envs": [2],
    "trial_seeds": [0],
    "steps": 1200,
    "checkpoint_freq": 100,
    "hyperparameters": {"lr": {"loguniform": [1.0e-3, 3.0e-3]}, "batch_size": 32, "hidden_dim": 64},
    "search": {"algorithm": "random", "num_samples": 4, "seed": 0},
    "scheduler": "none",
    "resources": {"cpu": 1},
    "max_failures": 3,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_node(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`ray start --block` in its own session, so the node (raylet and its workers) can be killed as one group."""
    return subprocess.Popen([RAY, "start", "--block", "--num-cpus", "1", "--disable-usage-stats", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture
def two_node_cluster() -> Iterator[dict[str, Any]]:
    scratch = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    for sub in ("head", "worker"):
        (scratch / sub).mkdir()
    # The nodes share the session's HOME (tests/conftest.py), where the driver reads the cluster's auth token.
    env = {**os.environ, "RAY_TMPDIR": str(scratch / "head")}
    saved = {key: os.environ.get(key) for key in ("RAY_TMPDIR",)}
    os.environ.update(RAY_TMPDIR=env["RAY_TMPDIR"])
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = start_node(["--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--include-dashboard", "false",
                       "--temp-dir", str(scratch / "head")], env)
    worker = None
    try:
        deadline = time.monotonic() + 120
        while True:  # the head accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or head.poll() is not None:
                    raise RuntimeError("the head node did not start") from None
                time.sleep(1)
        worker = start_node(["--address", address, "--node-ip-address", "127.0.0.1",
                             "--temp-dir", str(scratch / "worker")], {**env, "RAY_TMPDIR": str(scratch / "worker")})
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError("the worker node did not join")
            time.sleep(1)
        warm_up_nodes()
        yield {"address": address, "worker": worker, "scratch": scratch, "head_node": ray.get_runtime_context().get_node_id()}
    finally:
        ray.shutdown()
        if worker is not None:
            kill_group(worker)
        # Stop only this test's head: `ray stop` would stop every Ray on the machine, other users' included.
        kill_group(head)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(scratch, ignore_errors=True)


def warm_up_nodes() -> None:
    """Import torch and the trainable in an idle worker on each node: on a loaded machine the worker node's first
    actor otherwise takes longer to start than a short trial on the head, and Tune reuses the head's actor."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=1)
    def import_trainable() -> str:
        import fishr_tune.sweep.trainable  # noqa: F401

        return ray.get_runtime_context().get_node_id()

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    strategies = [NodeAffinitySchedulingStrategy(node, soft=False) for node in nodes]
    assert ray.get([import_trainable.options(scheduling_strategy=s).remote() for s in strategies], timeout=300) == nodes


def paced_trial(config: dict[str, Any], dataset_refs: Any, run: Any) -> None:
    """The real trial, resting 1.5 s after each record: trials outlast an actor start-up on a loaded machine
    (otherwise Tune may hand every trial to the head's reused actor) without adding CPU load."""
    run_trial(config, dataset_refs, run, after_report=lambda steps: time.sleep(1.5))


class KillWorkerNode(tune.Callback):
    """Kills the worker node (SIGKILL to its process group) once a trial there has reported past `after_step`."""

    def __init__(self, pgid: int, head_node: str, after_step: int):
        self.pgid, self.head_node, self.after_step = pgid, head_node, after_step
        self.killed_at: float | None = None

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.killed_at is None and result.get(NODE_ID) != self.head_node and result.get(records.STEP, 0) >= self.after_step:
            os.killpg(self.pgid, signal.SIGKILL)
            self.killed_at = time.monotonic()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_trials_land_on_both_nodes_and_losing_the_worker_node_loses_no_trial(two_node_cluster: dict[str, Any], tmp_path: Path) -> None:
    values = copy.deepcopy(CLUSTER_SPEC)
    values["storage_path"] = str(tmp_path / "sweeps")
    values["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = build_spec(values, "two_nodes.yaml")
    killer = KillWorkerNode(two_node_cluster["worker"].pid, two_node_cluster["head_node"], after_step=200)
    summary = run_sweep(spec, address=two_node_cluster["address"], trainable=paced_trial, callbacks=[killer],
                        stream=open(os.devnull, "w"))
    assert killer.killed_at is not None, "no trial ever ran on the worker node"

    rows_per_trial = {}
    for result_file in Path(summary.experiment_dir).glob("*/result.json"):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        rows_per_trial[rows[0]["trial_id"]] = rows
    nodes = {row[NODE_ID] for rows in rows_per_trial.values() for row in rows}
    assert len(nodes) == 2 and two_node_cluster["head_node"] in nodes
    # No trial lost: every one finished all its steps, none failed.
    assert (summary.finished, summary.failed, summary.unfinished) == (4, 0, 0)
    moved = []
    for trial_id, rows in rows_per_trial.items():
        steps = [row[records.STEP] for row in rows]
        assert steps[-1] == 1199 and steps == sorted(set(steps)), (trial_id, steps)
        if len({row[NODE_ID] for row in rows}) == 2:
            moved.append(rows)
    # The trial that was on the dead node continued on the head from its checkpoint, not from step 0.
    assert moved
    for rows in moved:
        assert rows[-1][NODE_ID] == two_node_cluster["head_node"] and rows[-1][START_STEP] >= 201


# ---- the progress display, fed Trial-like objects (what Tune's callbacks receive) ----

def fake_trial(trial_id: str, group: str, status: str, step: int | None = None, best: float | None = None,
               failure: str | None = None, done: bool | None = None) -> Any:
    """`done`: Tune's mark on the last result of a trial that returned or was stopped (default: when TERMINATED)."""
    from types import SimpleNamespace

    last: dict[str, Any] = {} if step is None else {records.STEP: step, "done": status == "TERMINATED" if done is None else done}
    if failure:
        last["failure"] = failure
    return SimpleNamespace(trial_id=trial_id, config={"group": group, "hparams": {"lr": 1e-3}}, status=status,
                           last_result=last, metric_analysis={} if best is None else {records.VAL_ACC: {"max": best}})


def progress_trials() -> list[Any]:
    erm, fishr = "ERM/te2/ts0", "Fishr/te2/ts0"
    return [
        fake_trial("e1", erm, "RUNNING", 40, 0.70),
        fake_trial("e2", erm, "TERMINATED", 119, 0.85),  # all 120 steps
        fake_trial("e3", erm, "TERMINATED", 40, 0.60),  # stopped by ASHA at a rung
        fake_trial("e4", erm, "ERROR", 80, 0.65),  # crashed more often than max_failures allows
        fake_trial("e5", erm, "PENDING"),
        fake_trial("f1", fishr, "TERMINATED", 81, float("nan"), failure="non-finite loss: nan"),  # diverged
        fake_trial("f2", fishr, "PAUSED", 40, 0.75),  # waiting for a slot: neither running nor done
        fake_trial("x1", "IRM/te2/ts0", "RUNNING", 40, 0.99),  # not a group of this sweep: ignored
    ]


def display_lines(stream: Any) -> list[str]:
    return [line.split("] ", 1)[1] for line in stream.getvalue().splitlines()]


def test_progress_display_counts_each_group_and_its_best_val_acc() -> None:
    import io

    from fishr_tune.sweep.progress import ProgressCallback

    spec = build_spec({**copy.deepcopy(BASE), "algorithms": ["ERM", "Fishr"], "steps": 120, "name": "progress"}, "test.yaml")
    stream = io.StringIO()
    progress = ProgressCallback(spec, stream, interval_s=3600.0)
    trials = progress_trials()
    progress.on_step_end(0, trials)
    expected = [
        "ERM/te2/ts0: 1 running, 1 finished, 1 stopped early, 1 failed, best val_acc 0.8500",
        "Fishr/te2/ts0: 0 running, 0 finished, 0 stopped early, 1 failed, best val_acc 0.7500",
    ]
    assert display_lines(stream) == expected
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] ERM/te2/ts0: .*", stream.getvalue().splitlines()[0])
    # within interval_s nothing is printed, even when the counts change ...
    trials[0] = fake_trial("e1", "ERM/te2/ts0", "TERMINATED", 119, 0.90)
    progress.on_step_end(1, trials)
    assert display_lines(stream) == expected
    # ... and the end of the experiment always shows the final counts, once
    progress.on_experiment_end(trials)
    final = ["ERM/te2/ts0: 0 running, 2 finished, 1 stopped early, 1 failed, best val_acc 0.9000",
             "Fishr/te2/ts0: 0 running, 0 finished, 0 stopped early, 1 failed, best val_acc 0.7500"]
    assert display_lines(stream) == expected + final
    progress.show(trials)  # unchanged counts: no new lines
    assert display_lines(stream) == expected + final


def test_summary_counts_trials_an_interruption_cut_off_as_unfinished() -> None:
    """A trial that Ctrl-C ended is TERMINATED without Tune's done mark, even after its final record: --resume runs
    it on, so it is neither finished nor stopped early; nor is a trial that never started."""
    from fishr_tune.sweep.outcomes import summarize_sweep

    spec = build_spec({**copy.deepcopy(BASE), "steps": 120, "name": "cut", "search": {"num_samples": 6}}, "t.yaml")
    erm = "ERM/te2/ts0"
    trials = [
        fake_trial("a", erm, "TERMINATED", 119, 0.8),  # finished
        fake_trial("b", erm, "TERMINATED", 40, 0.6),  # stopped early by the scheduler
        fake_trial("c", erm, "TERMINATED", 80, 0.7, done=False),  # cut off mid-way
        fake_trial("d", erm, "TERMINATED", 119, 0.9, done=False),  # cut off after its final record
        fake_trial("e", erm, "ERROR", 40, 0.5),
    ]
    summary = summarize_sweep(trials, spec, "/x", 1.0)
    assert (summary.trials, summary.finished, summary.stopped_early, summary.failed, summary.unfinished) == (5, 1, 1, 1, 3)
    counts = summary.groups[erm]
    assert (counts.finished, counts.stopped_early, counts.failed, counts.unfinished) == (1, 1, 1, 2)
    assert summary.interrupted and "3 unfinished (continue with --resume)" in summary.lines()[0]


def test_resumed_summary_counts_trials_that_ended_in_an_earlier_session() -> None:
    """On --resume, Tune restores a trial that had ended as TERMINATED and never starts it again, sometimes with a
    last result saved before its `done` mark (seen in CI): it still ended. A trial cut off in this session did not."""
    from fishr_tune.sweep.outcomes import summarize_sweep
    from fishr_tune.sweep.progress import ProgressCallback

    spec = build_spec({**copy.deepcopy(BASE), "steps": 120, "name": "resumed", "search": {"num_samples": 5}}, "t.yaml")
    erm = "ERM/te2/ts0"
    progress = ProgressCallback(spec, io.StringIO(), interval_s=3600.0)
    restored = [
        fake_trial("old-full", erm, "TERMINATED", 119, 0.8, done=False),  # ended last session, `done` not saved
        fake_trial("old-asha", erm, "TERMINATED", 40, 0.6, done=False),  # stopped by ASHA last session
        fake_trial("rerun", erm, "PENDING", 80, 0.7),  # cut off last session: Tune runs it on
        fake_trial("cut-again", erm, "PENDING", 40, 0.6),  # the same, and cut off again now
        fake_trial("waiting", erm, "PENDING"),
    ]
    progress.on_step_begin(0, restored)
    now = restored[:2] + [fake_trial("rerun", erm, "TERMINATED", 119, 0.9, done=False),
                          fake_trial("cut-again", erm, "TERMINATED", 80, 0.7, done=False), restored[4]]
    progress.on_step_begin(1, now)  # only the loop's first step says what was restored
    progress.on_trial_complete(1, now, now[2])
    progress.on_step_end(2, now)
    summary = summarize_sweep(progress.trials, spec, "/x", 1.0, progress.ended)
    assert (summary.finished, summary.stopped_early, summary.failed, summary.unfinished) == (2, 1, 0, 2)
    # Resuming a sweep whose trials had all ended: Tune's loop never steps, the experiment just ends (seen in CI)
    idle = ProgressCallback(spec, io.StringIO(), interval_s=3600.0)
    idle.on_experiment_end(restored[:2])
    summary = summarize_sweep(idle.trials, spec, "/x", 1.0, idle.ended)
    assert (summary.finished, summary.stopped_early, summary.unfinished) == (1, 1, 3)  # 3 samples never started


def test_progress_display_on_a_terminal_is_a_table() -> None:
    import io

    from fishr_tune.sweep.progress import ProgressCallback

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    spec = build_spec({**copy.deepcopy(BASE), "algorithms": ["ERM", "Fishr"], "steps": 120, "name": "progress"}, "test.yaml")
    stream = Terminal()
    progress = ProgressCallback(spec, stream)
    progress.on_step_end(0, progress_trials())
    assert progress.live is not None
    progress.on_experiment_end(progress_trials())
    assert progress.live is None
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue())
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("│").split("│")]
                                               for line in text.splitlines() if line.startswith("│"))}
    assert rows == {"ERM/te2/ts0": ["1", "1", "1", "1", "0.8500"], "Fishr/te2/ts0": ["0", "0", "0", "1", "0.7500"]}
    # Tune pickles its callbacks with the experiment: the copy keeps the settings and writes to stdout
    restored = cloudpickle.loads(cloudpickle.dumps(progress))
    assert (restored.spec.name, restored.interval_s, restored.stream, restored.live) == ("progress", 5.0, sys.stdout, None)


def test_the_summary_points_to_the_saved_view_of_the_trials(tmp_path, sqlite_uri: str) -> None:
    """A local store has no server to link to: the line says how to start `mlflow ui` and where to open."""
    from fishr_tune.sweep.runner import SweepSummary
    from fishr_tune.tracking.mlflow_ui import VIEW_ID, view_url

    uri = sqlite_uri
    experiment_id = MlflowClient(uri).create_experiment("viewed")
    route = view_url(uri, "viewed")
    assert route == f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_ID}&workflowType=machine_learning"
    assert view_url(uri, "never-ran") == ""
    summary = SweepSummary(name="viewed", experiment_dir=str(tmp_path), trials=1, finished=1, stopped_early=0, failed=0,
                           unfinished=0, steps_trained=10, steps_without_early_stopping=10, trial_compute_s=1.0,
                           wall_time_s=1.0, tracking_uri=uri, mlflow_view=route)
    last = summary.lines()[-1]
    assert f"`mlflow ui --backend-store-uri {uri}`" in last and last.endswith(f"http://127.0.0.1:5000/{route}")
