from __future__ import annotations

import logging
import math

import pytest

from fishr_tune import records


def sample_record(step: int = 10) -> dict:
    return records.make_record(
        step=step,
        epoch=0.5,
        losses={"loss": 0.7, "nll": 0.6, "penalty": 0.1},
        step_time=0.01,
        accuracies={0: {"in": 0.8, "out": 0.75}, 1: {"in": 0.9, "out": 0.85}, 2: {"in": 0.1, "out": 0.2}},
        hparams={"lr": 1e-3, "batch_size": 64},
        args={"dataset": "ColoredMNIST-IRM", "algorithm": "ERM", "test_envs": [2], "trial_seed": 0},
    )


def test_domainbed_field_names() -> None:
    record = sample_record()
    assert record["env0_in_acc"] == 0.8 and record["env2_out_acc"] == 0.2
    assert {"step", "epoch", "loss", "nll", "penalty", "step_time", "hparams", "args"} <= set(record)


def test_validation_accuracy_ignores_test_environments() -> None:
    assert records.validation_accuracy(sample_record()) == pytest.approx((0.75 + 0.85) / 2)


def test_jsonl_round_trip(tmp_path) -> None:
    path = tmp_path / "results.jsonl"
    written = [sample_record(0), sample_record(10)]
    for record in written:
        records.append(path, record)
    assert records.read(path) == written


def test_non_finite_values_are_written_as_null(tmp_path) -> None:
    record = sample_record()
    record["loss"] = math.nan
    path = tmp_path / "results.jsonl"
    records.append(path, record)
    assert records.read(path)[0]["loss"] is None


def test_a_bad_line_in_the_middle_is_skipped_with_a_warning_and_hides_nothing_after_it(tmp_path, caplog) -> None:
    path = tmp_path / "results.jsonl"
    records.append(path, sample_record(0))
    with open(path, "ab") as handle:
        handle.write(b'{"step": 1\n[1, 2]\n\xff\xfe not utf-8\n')
    records.append(path, sample_record(2))
    with caplog.at_level(logging.WARNING, logger="fishr_tune.records"):
        assert [r["step"] for r in records.read(path)] == [0, 2]
    assert [m for m in caplog.messages if m.startswith(f"{path}:")] == [
        f"{path}:2: skipped a line that is not a JSON object ('{{\"step\": 1')",
        f"{path}:3: skipped a line that is not a JSON object ('[1, 2]')",
        f"{path}:4: skipped a line that is not UTF-8 (12 bytes)",
    ]


def test_a_torn_last_line_is_set_aside_before_the_next_append(tmp_path, caplog) -> None:
    path = tmp_path / "results.jsonl"
    records.append(path, sample_record(0))
    whole = records.dumps(sample_record(1))
    with open(path, "a") as handle:
        handle.write(whole[:25])  # the writer died mid-line
    with caplog.at_level(logging.WARNING, logger="fishr_tune.records"):
        assert [r["step"] for r in records.read(path)] == [0]
        records.append(path, sample_record(1))
    assert [r["step"] for r in records.read(path)] == [0, 1]
    assert path.read_text().splitlines() == [records.dumps(sample_record(0)), whole]
    assert (tmp_path / "results.jsonl.torn").read_text() == whole[:25] + "\n"  # kept, not lost
    assert f"{path}:2: a torn last line" in caplog.text and "moved to results.jsonl.torn" in caplog.text


def test_a_complete_last_line_without_its_newline_is_kept(tmp_path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(records.dumps(sample_record(0)))
    records.append(path, sample_record(1))
    assert [r["step"] for r in records.read(path)] == [0, 1]
    assert not (tmp_path / "results.jsonl.torn").exists()


def test_a_record_glued_onto_a_torn_one_is_recovered(tmp_path) -> None:
    """What an appender that did not repair the tail leaves: the torn prefix and a whole record on one line."""
    path = tmp_path / "results.jsonl"
    path.write_text(records.dumps(sample_record(0))[:40] + records.dumps(sample_record(1)) + "\n")
    assert records.read(path) == [sample_record(1)]


def test_table_has_flat_columns() -> None:
    table = records.to_table([sample_record(0), sample_record(10)])
    assert list(table["step"]) == [0, 10]
    assert table["hparams.lr"].tolist() == [1e-3, 1e-3]
    assert table["args.test_envs"].tolist() == [[2], [2]]
