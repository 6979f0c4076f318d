"""Gatherers (DomainBed dirs, Ray results, parquet, MLflow), best configs, plots and the `analyze` command's exits."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from fishr_tune import records
from fishr_tune.analysis.best_config import BestConfig, write_best_configs
from fishr_tune.analysis.mlflow_reader import from_mlflow
from fishr_tune.analysis.plots import make_plots
from fishr_tune.analysis.readers import RAY_RESULT_FILE, gather_files
from fishr_tune.analysis.render import results_json
from fishr_tune.analysis.table import export_parquet, selection_table, selections, summaries_of
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
    table = gather_files(write_results_dirs(tmp_path / "sweep", RUNS, domainbed=True))
    assert set(table["run"]) == {"a", "b"} and len(table) == 6
    prepared = selection_table(table)
    assert set(prepared["steps"]) == {3}  # args.steps is null: the longest run sets it
    chosen = selections(prepared, ["training_domain"])["training_domain"].iloc[0]
    assert (chosen["run"], chosen["step"], chosen["test_acc"]) == ("a", 1, pytest.approx(0.40))
    assert json.loads(chosen["config"])["lr"] == 1e-3


def test_ray_results_dir(tmp_path: Path) -> None:
    for index, (name, recs) in enumerate(RUNS.items()):
        trial = tmp_path / "exp" / f"trial_{name}"
        trial.mkdir(parents=True)
        lines = [json.dumps({**records.flatten(r), "trial_id": f"t{index}", "group": "ERM/te2/ts0", "timestamp": 1}) for r in recs]
        lines.insert(0, json.dumps({"step": 0, "failure": "x", "trial_id": f"t{index}"}))  # not a record: skipped
        lines.append(lines[-1])  # the last record replayed by a trial resumed after Ctrl-C: read once
        (trial / RAY_RESULT_FILE).write_text("\n".join(lines) + "\n")
    table = gather_files(tmp_path / "exp")
    assert sorted(table["run"].unique()) == ["t0", "t1"] and len(table) == 6
    chosen = selections(selection_table(table), ["training_domain"])["training_domain"].iloc[0]
    assert (chosen["run"], chosen["step"]) == ("t0", 1)


def test_parquet_round_trip_keeps_the_selection(tmp_path: Path) -> None:
    table = gather_files(write_results_dirs(tmp_path / "runs", RUNS))
    path = export_parquet(table, tmp_path / "records.parquet")
    back = gather_files(path)
    assert len(back) == len(table)
    for method in ("training_domain", "oracle"):
        mine = selections(selection_table(table), [method])[method]
        theirs = selections(selection_table(back), [method])[method]
        pd.testing.assert_frame_equal(mine, theirs)


def log_sweep_to_mlflow(uri: str, name: str, runs: dict[str, list[dict]], args_tag: bool = True) -> None:
    """What sweep/tracking_callback.py writes: a parent run (kind sweep) and trial runs with params, tags, metrics."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from fishr_tune.tracking import param_value

    client = MlflowClient(uri)
    experiment = client.create_experiment(name)
    parent = client.create_run(experiment, tags={records.KIND_TAG: "sweep"})
    for key, value in {"steps": 3, "checkpoint_freq": 1, "holdout_fraction": 0.2, "label_noise": None, "data_dir": None}.items():
        client.log_param(parent.info.run_id, key, param_value(value))
    for run_name, recs in runs.items():
        args = recs[0]["args"]
        tags = {records.KIND_TAG: "trial", "dataset": args["dataset"], "algorithm": args["algorithm"],
                "test_envs": json.dumps(args["test_envs"]), "trial_seed": str(args["trial_seed"]),
                "ray_trial_id": f"trial_{run_name}", "mlflow.parentRunId": parent.info.run_id}
        if args_tag:
            tags[records.ARGS_TAG] = json.dumps(args)
        child = client.create_run(experiment, tags=tags, run_name=run_name)
        for key, value in recs[0]["hparams"].items():
            client.log_param(child.info.run_id, key, param_value(value))
        for rec in recs:
            metrics = [Metric(k, float(v), 0, rec["step"]) for k, v in rec.items()
                       if k.endswith("_acc") or k in ("loss", "step_time")]
            client.log_batch(child.info.run_id, metrics=metrics)


def test_mlflow_gatherer_rebuilds_the_records(tmp_path: Path, sqlite_uri: str) -> None:
    uri = sqlite_uri
    log_sweep_to_mlflow(uri, "quick", RUNS)
    sweep = from_mlflow(uri, "quick")
    table = sweep.table
    assert sorted(table["run"].unique()) == ["trial_a", "trial_b"] and len(table) == 6
    row = table[(table["run"] == "trial_a") & (table["step"] == 1)].iloc[0]
    assert row["env2_in_acc"] == pytest.approx(0.40) and row["val_acc"] == pytest.approx(0.8)
    assert row["hparams.lr"] == 1e-3 and row["hparams.featurizer"] == default_hparams("ERM", DATASET)["featurizer"]
    assert row["args.seed"] == 7 and list(row["args.test_envs"]) == [2] and row["args.steps"] == 3
    assert sweep.parent_run_id is not None
    chosen = selections(selection_table(table), ["training_domain"])["training_domain"].iloc[0]
    assert (chosen["run"], chosen["step"], chosen["test_acc"]) == ("trial_a", 1, pytest.approx(0.40))


def test_mlflow_runs_without_the_args_tag_fall_back_to_tags_and_the_sweep_params(tmp_path: Path, sqlite_uri: str) -> None:
    uri = sqlite_uri
    log_sweep_to_mlflow(uri, "old", RUNS, args_tag=False)
    table = from_mlflow(uri, "old").table
    assert set(table["args.steps"]) == {3} and set(table["args.algorithm"]) == {"ERM"} and "args.seed" not in table


def test_unknown_experiment_lists_the_existing_ones(tmp_path: Path, sqlite_uri: str) -> None:
    uri = sqlite_uri
    log_sweep_to_mlflow(uri, "quick", RUNS)
    result = CliRunner().invoke(main, ["analyze", "--experiment", "nope", "--tracking-uri", uri])
    assert result.exit_code == 2
    assert "no experiment 'nope'" in result.output and "quick" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_best_config_runs_as_a_train_config(tmp_path: Path) -> None:
    table = gather_files(write_results_dirs(tmp_path / "runs", RUNS))
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
    assert "2 groups selected" in result.stderr and "--algorithm/--test-env/--trial-seed" in result.stderr
    printed = printed_best_files(result.stderr)
    assert printed == [tmp_path / "out" / "best_ERM_te2_ts0.yaml", tmp_path / "out" / "best_IRM_te1_ts0.yaml"]
    assert [yaml.safe_load(p.read_text())["algorithm"] for p in printed] == ["ERM", "IRM"]
    assert not (tmp_path / "out" / "best.yaml").exists()
    (tmp_path / "out" / "best.yaml").write_text("# from an earlier analysis\n")
    result = CliRunner().invoke(main, ["analyze", "--records", str(tmp_path / "runs"), "--best-config",
                                       str(tmp_path / "out" / "best.yaml"), "--format", "json"])
    assert "already there is from an earlier analysis" in result.stderr  # a newcomer is not sent to a stale file
    result = CliRunner().invoke(main, ["analyze", "--records", str(tmp_path / "runs"), "--algorithm", "IRM",
                                       "--best-config", str(tmp_path / "one.yaml"), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "one.yaml").read_text())["algorithm"] == "IRM"


def printed_best_files(stderr: str) -> list[Path]:
    """The files `--best-config` says it wrote for several groups (one stderr line)."""
    line = next(line for line in stderr.splitlines() if line.startswith("Best configurations"))
    return [Path(name) for name in line.split("; wrote ")[1].split(" (for one file")[0].split(", ")]


def test_one_file_per_dataset_and_group_when_datasets_share_a_group_name(tmp_path: Path) -> None:
    best = BestConfig(DATASET, "ERM", 2, 0, "a", 1, 0.8, 0.4, "training_domain", {"dataset": DATASET})
    other = BestConfig(**{**best.__dict__, "dataset": "ColoredMNIST", "config": {"dataset": "ColoredMNIST"}})
    written = write_best_configs([best, other], tmp_path / "best.yaml")
    assert [p.name for p in written] == [f"best_{DATASET}_ERM_te2_ts0.yaml", "best_ColoredMNIST_ERM_te2_ts0.yaml"]
    assert [yaml.safe_load(p.read_text())["dataset"] for p in written] == [DATASET, "ColoredMNIST"]


def test_best_config_of_a_run_without_a_recorded_seed_says_it_does_not_reproduce(tmp_path: Path, sqlite_uri: str) -> None:
    """MLflow trial runs without the args tag have no seed: the file is written for its hyperparameters, but the
    command warns and the file's header says so, rather than letting training silently fall back to seed 0."""
    uri = sqlite_uri
    log_sweep_to_mlflow(uri, "old", RUNS, args_tag=False)
    target = tmp_path / "best.yaml"
    result = CliRunner().invoke(main, ["analyze", "--experiment", "old", "--tracking-uri", uri, "--selection",
                                       "training_domain", "--best-config", str(target), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert f"Warning: {target}: the records of run trial_a hold no args.seed" in result.stderr
    assert "will not reproduce step 1" in result.stderr
    text = target.read_text()
    assert "NOT A REPRODUCTION" in text and "# rerun:" not in text
    values = yaml.safe_load(text)
    assert "seed" not in values and values["hparams"]["lr"] == 1e-3 and values["holdout_fraction"] == 0.2

    log_sweep_to_mlflow(uri, "new", RUNS, args_tag=True)
    result = CliRunner().invoke(main, ["analyze", "--experiment", "new", "--tracking-uri", uri, "--selection",
                                       "training_domain", "--best-config", str(target), "--format", "json"])
    assert result.exit_code == 0 and "Warning" not in result.stderr
    assert yaml.safe_load(target.read_text())["seed"] == 7 and "# rerun:" in target.read_text()


def test_default_table_output_and_export_through_the_cli(tmp_path: Path) -> None:
    runs = {**RUNS, "c": [record(s, 1, 0.6, 0.25, algorithm="IRM") for s in range(3)]}
    write_results_dirs(tmp_path / "runs", runs)
    export = tmp_path / "export" / "records.parquet"
    result = CliRunner().invoke(main, ["analyze", "--records", str(tmp_path / "runs"), "--export", str(export)])
    assert result.exit_code == 0, result.output
    table = result.stdout
    assert "training-domain validation" in table and "test-domain validation (oracle)" in table
    assert "leave-one-domain-out cross-validation: no group has the runs this method needs" in table
    # The first (training_domain) table: ColoredMNIST-IRM's environment names (env1 = +90%, env2 = -90%) as
    # columns, one row per algorithm with mean ± se where it has a result (ERM: run a at step 1; IRM: run c).
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if "Algorithm" in line and "Avg" in line)
    cells = [[cell.strip() for cell in re.split("[┃│]", line)[1:-1]] for line in lines[start:start + 5] if line[0] in "┃│"]
    assert cells == [["Algorithm", "+90%", "-90%", "Avg"], ["ERM", "X", "40.0 ± 0.0", "X"], ["IRM", "25.0 ± 0.0", "X", "X"]]
    assert export.stat().st_size > 0 and f"rows written to {export}" in result.stderr

    from_dirs = CliRunner().invoke(main, ["analyze", "--records", str(tmp_path / "runs"), "--format", "json"])
    from_parquet = CliRunner().invoke(main, ["analyze", "--records", str(export), "--format", "json"])
    assert from_dirs.exit_code == 0 and from_parquet.exit_code == 0, from_parquet.output
    assert json.loads(from_parquet.stdout) == json.loads(from_dirs.stdout)
    assert json.loads(from_parquet.stdout)["training_domain"][DATASET]["IRM"]["1"]["mean"] == pytest.approx(25.0)


# --- leave-one-out on a DomainBed sweep output directory -----------------------------------------------------

DOMAINBED_HPARAMS = {"batch_size": 64, "class_balanced": False, "data_augmentation": True, "nonlinear_classifier": False,
                     "resnet18": False, "resnet_dropout": 0.0, "weight_decay": 0.0}
LOO_CONFIGS = {"A": (1, 1e-3), "B": (2, 3e-4)}  # name: (hparams_seed, lr), the same in every group as in DomainBed
LOO_TEST_ENVS = [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]
# (config, test envs, step) -> accuracies that differ from 0.5. For test env 0 (validated on env1 in the {0, 1} run
# and env2 in the {0, 2} run):
#   A @ step 0: (0.95 + 0.55) / 2 = 0.75; A @ 300: ineligible, A's {0, 2} run stopped after step 0
#   B @ step 0: 0.5 (the 1.0s are out splits, which leave-one-out never reads); B @ 300: (0.9 + 0.7) / 2 = 0.8
# so leave-one-out picks B at step 300 and reports B's {0} run's env0 in accuracy there: 0.42.
LOO_ACCURACIES = {
    ("A", (0,), 0): {"env0_in_acc": 0.99},
    ("A", (0, 1), 0): {"env1_in_acc": 0.95},
    ("A", (0, 1), 300): {"env1_in_acc": 1.0},
    ("A", (0, 2), 0): {"env2_in_acc": 0.55},
    ("B", (0,), 300): {"env0_in_acc": 0.42},
    ("B", (0, 1), 0): {"env1_out_acc": 1.0},
    ("B", (0, 1), 300): {"env1_in_acc": 0.9},
    ("B", (0, 2), 0): {"env2_out_acc": 1.0},
    ("B", (0, 2), 300): {"env2_in_acc": 0.7},
}


def write_domainbed_sweep(root: Path) -> dict[tuple[str, tuple[int, ...]], str]:
    """What DomainBed's sweep writes: one output dir per run (named by a hash of its args) holding results.jsonl
    (json.dumps(..., sort_keys=True) per checkpoint, DomainBed's keys), out.txt and done. Returns the dir names."""
    names = {}
    for config, (hparams_seed, lr) in LOO_CONFIGS.items():
        for test_envs in LOO_TEST_ENVS:
            args = {"algorithm": "ERM", "checkpoint_freq": None, "data_dir": "/data", "dataset": "ColoredMNIST",
                    "holdout_fraction": 0.2, "hparams": None, "hparams_seed": hparams_seed, "output_dir": "",
                    "save_model_every_checkpoint": False, "seed": 1000 + hparams_seed, "skip_model_save": False,
                    "steps": None, "task": "domain_generalization", "test_envs": list(test_envs), "trial_seed": 0,
                    "uda_holdout_fraction": 0}
            name = hashlib.md5(json.dumps(args, sort_keys=True).encode()).hexdigest()
            args["output_dir"] = str(root / name)
            steps = [0] if (config, test_envs) == ("A", (0, 2)) else [0, 300]
            lines = []
            for step in steps:
                accuracies = {f"env{i}_{split}_acc": 0.5 for i in range(3) for split in ("in", "out")}
                accuracies.update(LOO_ACCURACIES.get((config, test_envs, step), {}))
                lines.append(json.dumps({"args": args, "epoch": step / 100, "hparams": {**DOMAINBED_HPARAMS, "lr": lr},
                                         "loss": 0.3, "mem_gb": 0.1, "step": step, "step_time": 0.02, **accuracies},
                                        sort_keys=True))
            (root / name).mkdir(parents=True)
            (root / name / records.RESULTS_FILE).write_text("\n".join(lines) + "\n")
            (root / name / "out.txt").write_text("")
            (root / name / "done").write_text("done")
            names[(config, test_envs)] = name
    return names


def test_leave_one_out_on_a_domainbed_sweep_dir_matches_runs_by_configuration(tmp_path: Path) -> None:
    names = write_domainbed_sweep(tmp_path / "sweep")
    prepared = selection_table(gather_files(tmp_path / "sweep"))
    assert prepared["config"].nunique() == 2  # each configuration is one key across its six runs
    chosen = selections(prepared, ["leave_one_out"])["leave_one_out"]
    assert sorted(chosen["test_env"]) == [0, 1, 2]
    te0 = chosen[chosen["test_env"] == 0].iloc[0]
    assert (te0["run"], te0["step"]) == (names[("B", (0,))], 300)
    assert json.loads(te0["config"])["lr"] == 3e-4
    assert te0["val_acc"] == pytest.approx(0.8) and te0["test_acc"] == pytest.approx(0.42)
    cell = results_json(summaries_of({"leave_one_out": chosen}))["leave_one_out"]["ColoredMNIST"]["ERM"]["0"]
    assert cell == {"mean": pytest.approx(42.0), "se": pytest.approx(0.0), "n": 1}


def test_leave_one_out_survives_a_parquet_round_trip(tmp_path: Path) -> None:
    write_domainbed_sweep(tmp_path / "sweep")
    export = tmp_path / "records.parquet"
    args = ["analyze", "--selection", "leave_one_out", "--format", "json"]
    from_dirs = CliRunner().invoke(main, [*args, "--records", str(tmp_path / "sweep"), "--export", str(export)])
    from_parquet = CliRunner().invoke(main, [*args, "--records", str(export)])
    assert from_dirs.exit_code == 0 and from_parquet.exit_code == 0, from_parquet.output
    assert json.loads(from_parquet.stdout) == json.loads(from_dirs.stdout)
    assert json.loads(from_parquet.stdout)["leave_one_out"]["ColoredMNIST"]["ERM"]["0"]["mean"] == pytest.approx(42.0)
    mine = selections(selection_table(gather_files(tmp_path / "sweep")), ["leave_one_out"])["leave_one_out"]
    theirs = selections(selection_table(gather_files(export)), ["leave_one_out"])["leave_one_out"]
    pd.testing.assert_frame_equal(mine, theirs)


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
    prepared = selection_table(gather_files(tmp_path / "runs"))
    paths = make_plots(prepared, tmp_path / "plots")
    names = sorted(p.name for p in paths)
    assert names == [f"hparams_{DATASET}_ERM.png", f"val_vs_test_{DATASET}_ERM_te2_ts0.png"]
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_accuracy_ticks_have_the_decimals_their_spacing_needs() -> None:
    from fishr_tune.analysis.plots import percent_decimals

    assert percent_decimals([0.05 * i for i in range(14, 20)]) == 0  # 70%, 75%, ...
    assert percent_decimals([0.097, 0.098, 0.099, 0.100]) == 1  # 9.7%, 9.8%: not 9.700%
    assert percent_decimals([0.848, 0.850, 0.852]) == 1 and percent_decimals([0.8481, 0.8482]) == 2
    assert percent_decimals([0.5]) == 0


def test_axis_kind_follows_the_search_distribution() -> None:
    from fishr_tune.analysis.plots import CATEGORICAL, LINEAR, LOG, axis_kind

    assert axis_kind([64, 128, 64], "choice") == CATEGORICAL  # a choice of numbers stays categorical
    assert axis_kind(["closed_form", "backpack"]) == CATEGORICAL and axis_kind([True, False]) == CATEGORICAL
    assert axis_kind([1e-3, 2e-3], "loguniform") == LOG and axis_kind([8, 16], "logint") == LOG
    assert axis_kind([0.0, 100.0], "loguniform") == LINEAR  # log of 0 is undefined: fall back to linear
    assert axis_kind([0.9, 0.95], "uniform") == LINEAR
    assert axis_kind([1e-5, 1e-2]) == LOG and axis_kind([1e-3, 5e-2]) == LINEAR  # unknown: more than two decades


def test_selection_table_vectorized_config_keys_match_per_row_json(tmp_path: Path) -> None:
    table = gather_files(write_results_dirs(tmp_path / "runs", RUNS))
    prepared = selection_table(table)
    for row in prepared.to_dict("records"):
        expected = json.dumps({k[len("hparams."):]: v for k, v in row.items() if k.startswith("hparams.")}, sort_keys=True)
        assert row["config"] == expected
