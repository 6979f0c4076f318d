from __future__ import annotations

import json
import logging
import time

from mlflow.tracking import MlflowClient

from fishr_tune import records
from fishr_tune.tracking import MlflowJournal
from fishr_tune.tracking.mlflow_store import KEY_TAG


def write_trial(journal: MlflowJournal, key: str, steps: list[int]) -> None:
    journal.start_run(key, f"Fishr te2 ts0 {key}", parent="sweep", params={"lambda": 1000.0}, tags={"algorithm": "Fishr"})
    for step in steps:
        journal.log_metrics(key, {"env0_in_acc": step / 100, "val_acc": step / 200}, step=step, timestamp_ms=1_000 + step)
    journal.end_run(key)


def metric_points(client: MlflowClient, run_id: str, name: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))


def test_parent_and_child_runs_in_sqlite(tmp_path, sqlite_uri: str) -> None:
    uri = sqlite_uri
    journal = MlflowJournal(tmp_path / "journal", uri, "quickstart")
    journal.start_run("sweep", "quickstart", params={"steps": 600})
    write_trial(journal, "t1", [0, 100, 200])
    assert journal.pending() == 6
    assert journal.flush() == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    child = next(r for r in runs if r.data.tags[KEY_TAG] == "t1")
    assert child.data.tags["mlflow.parentRunId"] == journal.run_id("sweep")
    assert child.data.params["lambda"] == "1000.0" and child.data.tags["algorithm"] == "Fishr"
    assert child.info.status == "FINISHED"
    assert metric_points(client, child.info.run_id, "env0_in_acc") == [(0, 0.0), (100, 1.0), (200, 2.0)]


def test_replaying_the_journal_duplicates_nothing(tmp_path, sqlite_uri: str) -> None:
    uri = sqlite_uri
    journal = MlflowJournal(tmp_path / "journal", uri, "replay")
    journal.start_run("sweep", "replay")
    write_trial(journal, "t1", [0, 100])
    journal.flush()
    # as if the process died after sending but before recording what was sent, and lost its run map too
    (tmp_path / "journal" / "sent").write_text("0")
    (tmp_path / "journal" / "runs.json").unlink()
    assert journal.flush(force=True) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("replay").experiment_id])
    assert len(runs) == 2
    child = next(r for r in runs if r.data.tags[KEY_TAG] == "t1")
    assert metric_points(client, child.info.run_id, "val_acc") == [(0, 0.0), (100, 0.5)]


def test_a_retried_trial_continues_its_own_run(tmp_path, sqlite_uri: str) -> None:
    uri = sqlite_uri
    journal = MlflowJournal(tmp_path / "journal", uri, "retry")
    journal.start_run("sweep", "retry")
    write_trial(journal, "t1", [0, 100])
    journal.flush()
    write_trial(journal, "t1", [100, 200])  # the retry starts again from its checkpoint at step 100
    journal.flush()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("retry").experiment_id], filter_string=f"tags.`{KEY_TAG}` = 't1'")
    assert len(runs) == 1
    steps = [s for s, _ in metric_points(client, runs[0].info.run_id, "val_acc")]
    assert steps == [0, 100, 200]


def test_server_outage_loses_and_duplicates_nothing(tmp_path, mlflow_server) -> None:
    journal = MlflowJournal(tmp_path / "journal", mlflow_server.uri, "journal-outage")
    journal.start_run("sweep", "journal-outage")
    write_trial(journal, "t1", [0, 100])
    assert journal.flush() == 0
    mlflow_server.stop()
    write_trial(journal, "t2", [0, 100, 200])
    started = time.monotonic()
    assert journal.flush(force=True) == 5
    assert time.monotonic() - started < 30, "an unreachable server must fail fast"
    assert journal.last_error
    mlflow_server.start()
    assert journal.flush(force=True) == 0
    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("journal-outage").experiment_id])
    assert sorted(r.data.tags[KEY_TAG] for r in runs) == ["sweep", "t1", "t2"]
    t2 = next(r for r in runs if r.data.tags[KEY_TAG] == "t2")
    assert metric_points(client, t2.info.run_id, "env0_in_acc") == [(0, 0.0), (100, 1.0), (200, 2.0)]


def test_sync_reopens_a_journal(tmp_path, sqlite_uri: str) -> None:
    uri = sqlite_uri
    journal = MlflowJournal(tmp_path / "journal", "http://127.0.0.1:9", "later")
    journal.start_run("sweep", "later")
    assert journal.flush(force=True) == 1
    reopened = MlflowJournal.open_existing(tmp_path / "journal", tracking_uri=uri)
    assert reopened.flush() == 0
    assert MlflowClient(uri).get_experiment_by_name("later") is not None


def test_mlflow_sync_command(tmp_path, sqlite_uri: str) -> None:
    from click.testing import CliRunner

    from fishr_tune.cli import main

    journal = MlflowJournal(tmp_path / "sweep" / "mlflow", "http://127.0.0.1:9", "synced")
    journal.start_run("sweep", "synced")
    write_trial(journal, "t1", [0])
    runner = CliRunner()
    down = runner.invoke(main, ["mlflow-sync", str(tmp_path / "sweep")])
    assert down.exit_code == 1 and "4 still pending" in down.output
    uri = sqlite_uri
    up = runner.invoke(main, ["mlflow-sync", str(tmp_path / "sweep"), "--tracking-uri", uri])
    assert up.exit_code == 0 and "4 operations sent" in up.output
    assert len(MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("synced").experiment_id])) == 2
    missing = runner.invoke(main, ["mlflow-sync", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no MLflow journal here" in missing.output


def test_one_log_batch_per_checkpoint(tmp_path, sqlite_uri: str, monkeypatch) -> None:
    """Each checkpoint's metrics go in one log_batch call, sent once, however often the journal is flushed.

    The other batches, stated: a run's start sends its params and tags in batches of at most 100 params (the
    first batch also carries the tags), and each set_tags sends one batch of tags; end_run is set_terminated.
    """
    batches: list[tuple[str, dict]] = []
    original = MlflowClient.log_batch

    def counting_log_batch(self, run_id, *args, **kwargs):
        batches.append((run_id, {name: list(kwargs.get(name) or []) for name in ("metrics", "params", "tags")}))
        return original(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", counting_log_batch)
    uri = sqlite_uri
    journal = MlflowJournal(tmp_path / "journal", uri, "batches")
    journal.start_run("sweep", "batches", params={f"p{i}": i for i in range(150)}, tags={records.KIND_TAG: records.KIND_SWEEP})
    journal.start_run("t1", "ERM te2 ts0 t1", parent="sweep", params={"lr": 1e-3, "batch_size": 32}, tags={"algorithm": "ERM"})
    checkpoints = [0, 40, 80, 120, 159]
    for step in checkpoints:  # the sweep flushes while trials run: some flushes find one checkpoint, some none
        journal.log_metrics("t1", {"env0_in_acc": 0.5, "env0_out_acc": 0.5, "val_acc": step / 200, "loss": 0.7, "nll": 0.7},
                            step=step, timestamp_ms=1_000 + step)
        assert journal.flush(force=True) == 0
        assert journal.flush(force=True) == 0
    journal.set_tags("t1", {"status": "finished"})
    journal.end_run("t1")
    assert journal.flush(force=True) == 0

    sweep_id, trial_id = journal.run_id("sweep"), journal.run_id("t1")
    metric_batches = [(run, batch["metrics"]) for run, batch in batches if batch["metrics"]]
    assert len(metric_batches) == len(checkpoints)
    assert [run for run, _ in metric_batches] == [trial_id] * len(checkpoints)
    for (_, metrics), step in zip(metric_batches, checkpoints):
        assert {m.step for m in metrics} == {step} and len(metrics) == 5
    assert all(not batch["params"] and not batch["tags"] for _, batch in batches if batch["metrics"])
    # (the key and parent tags go with create_run, not in a batch)
    param_batches = [(run, len(batch["params"]), len(batch["tags"])) for run, batch in batches if batch["params"]]
    assert param_batches == [(sweep_id, 100, 1), (sweep_id, 50, 0), (trial_id, 2, 1)]
    tag_batches = [(run, [t.key for t in batch["tags"]]) for run, batch in batches if not batch["params"] and not batch["metrics"]]
    assert tag_batches == [(trial_id, ["status"])]
    assert len(batches) == len(checkpoints) + 4
    client = MlflowClient(uri)
    assert [s for s, _ in metric_points(client, trial_id, "val_acc")] == checkpoints
    assert client.get_run(trial_id).info.status == "FINISHED"


def test_a_torn_journal_line_then_more_operations_reach_a_real_server_exactly_once(tmp_path, mlflow_server, caplog) -> None:
    """The driver dies mid-append; the resumed driver journals on. Everything complete is sent, each thing once."""
    directory = tmp_path / "journal"
    journal = MlflowJournal(directory, mlflow_server.uri, "torn")
    journal.start_run("sweep", "torn")
    journal.start_run("t1", "ERM te2 ts0 t1", parent="sweep", params={"lr": 1e-3})
    journal.log_metrics("t1", {"val_acc": 0.0}, step=0, timestamp_ms=1_000)
    assert journal.flush(force=True) == 0
    journal.log_metrics("t1", {"val_acc": 0.5}, step=100, timestamp_ms=1_100)
    path = directory / "journal.jsonl"
    path.write_bytes(path.read_bytes()[:-30])  # killed in the middle of writing that line

    resumed = MlflowJournal.open_existing(directory)
    with caplog.at_level(logging.WARNING, logger="fishr_tune.records"):
        assert resumed.pending() == 0
        resumed.log_metrics("t1", {"val_acc": 0.5}, step=100, timestamp_ms=1_200)  # the trial reports it again
        resumed.log_metrics("t1", {"val_acc": 1.0}, step=200, timestamp_ms=1_300)
        resumed.end_run("t1")
        write_trial(resumed, "t2", [0, 100])
        assert resumed.pending() == 7
        assert resumed.flush(force=True) == 0
    assert f"{path}:4: a torn last line" in caplog.text
    assert resumed.flush(force=True) == 0  # nothing left to send twice
    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("torn").experiment_id])
    assert sorted(r.data.tags[KEY_TAG] for r in runs) == ["sweep", "t1", "t2"]
    by_key = {r.data.tags[KEY_TAG]: r for r in runs}
    assert metric_points(client, by_key["t1"].info.run_id, "val_acc") == [(0, 0.0), (100, 0.5), (200, 1.0)]
    assert metric_points(client, by_key["t2"].info.run_id, "val_acc") == [(0, 0.0), (100, 0.5)]
    assert by_key["t1"].info.status == by_key["t2"].info.status == "FINISHED"


def test_mlflow_sync_sends_everything_after_a_bad_line(tmp_path, sqlite_uri: str) -> None:
    """A journal left by an appender that did not repair its torn tail: the torn op and the next one share a line."""
    from click.testing import CliRunner

    from fishr_tune.cli import main

    directory = tmp_path / "sweep" / "mlflow"
    journal = MlflowJournal(directory, "http://127.0.0.1:9", "glued")
    journal.start_run("sweep", "glued")
    journal.start_run("t1", "ERM te2 ts0 t1", parent="sweep")
    path = directory / "journal.jsonl"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"key": "t1", "metrics": {"val_a')  # torn
        handle.write(json.dumps({"key": "t1", "metrics": {"val_acc": 0.25}, "op": "metrics", "step": 0, "timestamp": 5}) + "\n")
        handle.write("garbage\n")
    journal.log_metrics("t1", {"val_acc": 0.75}, step=40, timestamp_ms=6)
    journal.end_run("t1")
    uri = sqlite_uri
    result = CliRunner().invoke(main, ["mlflow-sync", str(tmp_path / "sweep"), "--tracking-uri", uri])
    assert result.exit_code == 0 and "5 operations sent" in result.output, result.output
    client = MlflowClient(uri)
    t1 = client.search_runs([client.get_experiment_by_name("glued").experiment_id], filter_string=f"tags.`{KEY_TAG}` = 't1'")
    assert metric_points(client, t1[0].info.run_id, "val_acc") == [(0, 0.25), (40, 0.75)]
    assert t1[0].info.status == "FINISHED"
