from __future__ import annotations

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


def test_torn_last_line_is_ignored_but_corruption_elsewhere_is_an_error(tmp_path) -> None:
    path = tmp_path / "results.jsonl"
    records.append(path, sample_record(0))
    with open(path, "a") as handle:
        handle.write('{"step": 1')
    assert [r["step"] for r in records.read(path)] == [0]
    with open(path, "a") as handle:
        handle.write("\n" + records.dumps(sample_record(2)) + "\n")
    with pytest.raises(ValueError, match="results.jsonl:2"):
        records.read(path)


def test_table_has_flat_columns() -> None:
    table = records.to_table([sample_record(0), sample_record(10)])
    assert list(table["step"]) == [0, 10]
    assert table["hparams.lr"].tolist() == [1e-3, 1e-3]
    assert table["args.test_envs"].tolist() == [[2], [2]]
