"""Gatherers (DomainBed dirs, Ray results, parquet, MLflow), best configs, plots and the `analyze` command's exits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from fishr_tune import analyze as an
from fishr_tune import records
from fishr_tune.cli import main
from fishr_tune.hparams import default_hparams
from fishr_tune.training import make_config

DATASET = "ColoredMNIST-IRM"


def record(step: int, test_env: int, val: float, test: float, *, algorithm: str = "ERM", lr: float = 1e-3,
           trial_seed: int = 0, steps: int | None = 3, seed: int = 7) -> dict[str, Any]:
    """A record whose training-domain validation is `val` and whose test-env in accuracy is `test`."""
    accuracies = {i: {"in": 0.5, "out": val} for i in range(3)}
    accuracies[test_env] = {"in": test, "out": 0.1}
    hparams = {**default_hparams(algorithm, DATASET), "lr": lr}
    args: dict[str, Any] = {"dataset": DATASET, "algorithm": algorithm, "test_envs": [test_env], "trial_seed": trial_seed,
                            "hparams_seed": 0, "seed": seed, "holdout_fraction": 0.2, "checkpoint_freq": 1,
                            "label_noise": 0.25}
    if steps is not None:
        args["steps"] = steps
    rec = records.make_record(step=step, epoch=0.1 * step, losses={"loss": 1.0}, step_time=0.01, accuracies=accuracies,
                              hparams=hparams, args=args)
    rec[records.VAL_ACC] = records.validation_accuracy(rec)
    return rec


# Two runs of group (ERM, test env 2, trial seed 0): run "a" peaks at step 1 (val 0.8), run "b" at step 2 (val 0.7).
RUNS = {
    "a": [record(0, 2, 0.6, 0.30), record(1, 2, 0.8, 0.40), record(2, 2, 0.7, 0.50)],
    "b": [record(0, 2, 0.5, 0.90, lr=2e-3), record(1, 2, 0.6, 0.90, lr=2e-3), record(2, 2, 0.7, 0.95, lr=2e-3)],
}


def write_results_dirs(root: Path, runs: dict[str, list[dict]], domainbed: bool = False) -> Path:
    for name, recs in runs.items():
        (root / name).mkdir(parents=True)
        for rec in recs:
            if domainbed:  # DomainBed's args: no steps (null), hparams as a JSON string, extra keys
                rec = {**rec, "args": {**{k: v for k, v in rec["args"].items() if k != "steps"}, "steps": None,
                                       "hparams": None, "output_dir": str(root / name)}, "mem_gb": 0.1}
            records.append(root / name / records.RESULTS_FILE, rec)
    return root


def test_domainbed_dir_infers_the_final_step(tmp_path: Path) -> None:
    table = an.gather_files(write_results_dirs(tmp_path / "sweep", RUNS, domainbed=True))
    assert set(table["run"]) == {"a", "b"} and len(table) == 6
    prepared = an.selection_table(table)
    assert set(prepared["steps"]) == {3}  # args.steps is null: the longest run sets it
    chosen = an.selections(prepared, ["training_domain"])["training_domain"].iloc[0]
    assert (chosen["run"], chosen["step"], chosen["test_acc"]) == ("a", 1, pytest.approx(0.40))
    assert json.loads(chosen["config"])["lr"] == 1e-3


def test_ray_results_dir(tmp_path: Path) -> None:
    for index, (name, recs) in enumerate(RUNS.items()):
        trial = tmp_path / "exp" / f"trial_{name}"
        trial.mkdir(parents=True)
        lines = [json.dumps({**records.flatten(r), "trial_id": f"t{index}", "group": "ERM/te2/ts0", "timestamp": 1}) for r in recs]
        lines.insert(0, json.dumps({"step": 0, "failure": "x", "trial_id": f"t{index}"}))  # not a record: skipped
        lines.append(lines[-1])  # the last record replayed by a trial resumed after Ctrl-C: read once
        (trial / an.RAY_RESULT_FILE).write_text("\n".join(lines) + "\n")
    table = an.gather_files(tmp_path / "exp")
    assert sorted(table["run"].unique()) == ["t0", "t1"] and len(table) == 6
    chosen = an.selections(an.selection_table(table), ["training_domain"])["training_domain"].iloc[0]
    assert (chosen["run"], chosen["step"]) == ("t0", 1)


def test_parquet_round_trip_keeps_the_selection(tmp_path: Path) -> None:
    table = an.gather_files(write_results_dirs(tmp_path / "runs", RUNS))
    path = an.export_parquet(table, tmp_path / "records.parquet")
    back = an.gather_files(path)
    assert len(back) == len(table)
    for method in ("training_domain", "oracle"):
        mine = an.selections(an.selection_table(table), [method])[method]
        theirs = an.selections(an.selection_table(back), [method])[method]
        pd.testing.assert_frame_equal(mine, theirs)


def log_sweep_to_mlflow(uri: str, name: str, runs: dict[str, list[dict]], args_tag: bool = True) -> None:
    """What sweep/mlflow_callback.py writes: a parent run (kind sweep) and trial runs with params, tags, metrics."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from fishr_tune.tracking import _param_value

    client = MlflowClient(uri)
    experiment = client.create_experiment(name)
    parent = client.create_run(experiment, tags={an.KIND_TAG: "sweep"})
    for key, value in {"steps": 3, "checkpoint_freq": 1, "holdout_fraction": 0.2, "label_noise": None, "data_dir": None}.items():
        client.log_param(parent.info.run_id, key, _param_value(value))
    for index, (run_name, recs) in enumerate(runs.items()):
        args = recs[0]["args"]
        tags = {an.KIND_TAG: "trial", "dataset": args["dataset"], "algorithm": args["algorithm"],
                "test_envs": json.dumps(args["test_envs"]), "trial_seed": str(args["trial_seed"]),
                "ray_trial_id": f"trial_{run_name}", "mlflow.parentRunId": parent.info.run_id}
        if args_tag:
            tags[an.ARGS_TAG] = json.dumps(args)
        child = client.create_run(experiment, tags=tags, run_name=run_name)
        for key, value in recs[0]["hparams"].items():
            client.log_param(child.info.run_id, key, _param_value(value))
        for rec in recs:
            metrics = [Metric(k, float(v), 0, rec["step"]) for k, v in rec.items()
                       if k.endswith("_acc") or k in ("loss", "step_time")]
            client.log_batch(child.info.run_id, metrics=metrics)


def test_mlflow_gatherer_rebuilds_the_records(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_sweep_to_mlflow(uri, "quick", RUNS)
    sweep = an.from_mlflow(uri, "quick")
    table = sweep.table
    assert sorted(table["run"].unique()) == ["trial_a", "trial_b"] and len(table) == 6
    row = table[(table["run"] == "trial_a") & (table["step"] == 1)].iloc[0]
    assert row["env2_in_acc"] == pytest.approx(0.40) and row["val_acc"] == pytest.approx(0.8)
    assert row["hparams.lr"] == 1e-3 and row["hparams.featurizer"] == default_hparams("ERM", DATASET)["featurizer"]
    assert row["args.seed"] == 7 and list(row["args.test_envs"]) == [2] and row["args.steps"] == 3
    assert sweep.parent_run_id is not None
    chosen = an.selections(an.selection_table(table), ["training_domain"])["training_domain"].iloc[0]
    assert (chosen["run"], chosen["step"], chosen["test_acc"]) == ("trial_a", 1, pytest.approx(0.40))


def test_mlflow_runs_without_the_args_tag_fall_back_to_tags_and_the_sweep_params(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_sweep_to_mlflow(uri, "old", RUNS, args_tag=False)
    table = an.from_mlflow(uri, "old").table
    assert set(table["args.steps"]) == {3} and set(table["args.algorithm"]) == {"ERM"} and "args.seed" not in table


def test_unknown_experiment_lists_the_existing_ones(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_sweep_to_mlflow(uri, "quick", RUNS)
    result = CliRunner().invoke(main, ["analyze", "--experiment", "nope", "--tracking-uri", uri])
    assert result.exit_code == 2
    assert "no experiment 'nope'" in result.output and "quick" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_best_config_runs_as_a_train_config(tmp_path: Path) -> None:
    table = an.gather_files(write_results_dirs(tmp_path / "runs", RUNS))
    target = tmp_path / "best.yaml"
    result = CliRunner().invoke(main, ["analyze", "--records", str(tmp_path / "runs"), "--selection", "training_domain",
                                       "--best-config", str(target), "--format", "json"])
    assert result.exit_code == 0, result.output
    values = yaml.safe_load(target.read_text())
    assert values["hparams"]["lr"] == 1e-3 and values["seed"] == 7 and values["steps"] == 3
    assert values["test_envs"] == [2] and values["label_noise"] == 0.25 and values["checkpoint_freq"] == 1
    config = make_config(values, str(target))
    assert config.resolved_hparams() == table[table["run"] == "a"].iloc[0].filter(like="hparams.").rename(
        lambda c: c[len("hparams."):]).to_dict()
    assert "selected run a at step 1" in target.read_text()


def test_several_groups_give_one_file_each_unless_filtered(tmp_path: Path) -> None:
    runs = {**RUNS, "c": [record(s, 1, 0.6, 0.2, algorithm="IRM") for s in range(3)]}
    write_results_dirs(tmp_path / "runs", runs)
    result = CliRunner().invoke(main, ["analyze", "--records", str(tmp_path / "runs"), "--best-config",
                                       str(tmp_path / "out" / "best.yaml"), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["best_ERM_te2_ts0.yaml", "best_IRM_te1_ts0.yaml"]
    assert "2 groups selected" in result.output
    result = CliRunner().invoke(main, ["analyze", "--records", str(tmp_path / "runs"), "--algorithm", "IRM",
                                       "--best-config", str(tmp_path / "one.yaml"), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "one.yaml").read_text())["algorithm"] == "IRM"


def test_json_output_is_one_object_of_the_documented_shape(tmp_path: Path) -> None:
    runs = {f"{name}{seed}": [{**r, "args": {**r["args"], "trial_seed": seed}} for r in recs]
            for name, recs in RUNS.items() for seed in (0, 1)}
    write_results_dirs(tmp_path / "runs", runs)
    result = CliRunner().invoke(main, ["analyze", "--records", str(tmp_path / "runs"), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"training_domain", "leave_one_out", "oracle"}
    cell = data["training_domain"][DATASET]["ERM"]["2"]
    assert cell == {"mean": pytest.approx(40.0), "se": pytest.approx(0.0), "n": 2}
    assert data["training_domain"][DATASET]["ERM"]["avg"]["n"] == 2
    assert data["leave_one_out"] == {}  # no runs with two test envs


@pytest.mark.parametrize("args, message", [
    (["--records", "/nonexistent/dir"], "does not exist"),
    (["--records", "{empty}"], "no results.jsonl"),
    (["--records", "{runs}", "--selection", "best"], "--selection: expected one of"),
    (["--records", "{runs}", "--format", "html"], "--format: expected one of"),
    ([], "give exactly one source"),
    (["--experiment", "x", "--tracking-uri", "sqlite:///{empty}/none.db"], "no MLflow store"),
    (["--records", "{runs}", "--algorithm", "VREx"], "no records left"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    write_results_dirs(tmp_path / "runs", RUNS)
    args = [a.format(empty=tmp_path / "empty", runs=tmp_path / "runs") for a in args]
    result = CliRunner().invoke(main, ["analyze", *args])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "empty" / "none.db").exists()  # a missing store is not created


def test_plots_are_written(tmp_path: Path) -> None:
    write_results_dirs(tmp_path / "runs", RUNS)
    prepared = an.selection_table(an.gather_files(tmp_path / "runs"))
    paths = an.make_plots(prepared, tmp_path / "plots")
    names = sorted(p.name for p in paths)
    assert names == [f"hparams_{DATASET}_ERM.png", f"val_vs_test_{DATASET}_ERM_te2_ts0.png"]
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_log_axis_for_lambda_and_wide_ranges() -> None:
    from fishr_tune.plots import wants_log_axis

    assert wants_log_axis("lambda", [10.0, 20.0])
    assert wants_log_axis("lr", [1e-5, 1e-2]) and not wants_log_axis("lr", [1e-3, 5e-2])
    assert not wants_log_axis("lambda", [0.0, 100.0])


def test_selection_table_vectorized_config_keys_match_per_row_json(tmp_path: Path) -> None:
    table = an.gather_files(write_results_dirs(tmp_path / "runs", RUNS))
    prepared = an.selection_table(table)
    for row in prepared.to_dict("records"):
        expected = json.dumps({k[len("hparams."):]: v for k, v in row.items() if k.startswith("hparams.")}, sort_keys=True)
        assert row["config"] == expected
