"""analyze on DomainBed-layout sweep directories equals DomainBed's collect_results, ties and truncated runs included.

The reference below follows DomainBed's documented rules literally (domainbed/model_selection.py, lib/query.py,
lib/reporting.py, scripts/collect_results.py), over plain lists of records:
- records are grouped by (trial_seed, dataset, algorithm, test_env), a record joining one group per test env;
- within a group, runs are the records of one `args.hparams_seed`, visited in ascending hparams_seed (`Q.group`);
- a run's accuracy (`run_acc`): training-domain takes `max` (the first maximal record) of the single-test-env
  records' mean training-env out accuracy; the oracle takes the last record by step, truncated runs included
  (nothing checks `done`); leave-one-out takes the first best step whose single run and every pair run exist;
- the sweep's accuracy: `sorted(run_accs, key=val_acc)[::-1][0]`, so among equal accuracies the last run wins;
- a table cell is 100 * mean and 100 * std(data / sqrt(n)) over trial seeds; Avg is the mean of the cell means.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from fishr_tune.cli import main

DATASET = "ColoredMNIST"
N_ENVS = 3
HPARAMS = {"batch_size": 64, "class_balanced": False, "data_augmentation": True, "nonlinear_classifier": False,
           "resnet18": False, "resnet_dropout": 0.0, "weight_decay": 0.0}
ALL_TEST_ENVS = [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]


# --- DomainBed's rules, written out ---------------------------------------------------------------------------------


def _nan_low(value: float) -> float:
    return float("-inf") if isinstance(value, float) and math.isnan(value) else value


def _training_domain_run(records: list[dict]) -> dict | None:
    tests = [r for r in records if len(r["args"]["test_envs"]) == 1]
    if not tests:
        return None
    steps = []
    for r in tests:
        t = r["args"]["test_envs"][0]
        keys = [f"env{i}_out_acc" for i in itertools.takewhile(lambda i: f"env{i}_out_acc" in r, itertools.count())  # noqa: B023
                if i != t]
        steps.append({"val_acc": float(np.mean([r[k] for k in keys])), "test_acc": r[f"env{t}_in_acc"], "step": r["step"]})
    return max(steps, key=lambda s: s["val_acc"])  # the first of equal ones


def _oracle_run(records: list[dict]) -> dict | None:
    tests = [r for r in records if len(r["args"]["test_envs"]) == 1]
    if not tests:
        return None
    t = tests[0]["args"]["test_envs"][0]
    last = sorted(tests, key=lambda r: r["step"])[-1]
    return {"val_acc": last[f"env{t}_out_acc"], "test_acc": last[f"env{t}_in_acc"], "step": last["step"]}


def _leave_one_out_step(records: list[dict]) -> dict | None:
    tests = [r for r in records if len(r["args"]["test_envs"]) == 1]
    if len(tests) != 1:
        return None
    t = tests[0]["args"]["test_envs"][0]
    n_envs = len([i for i in itertools.takewhile(lambda i: f"env{i}_out_acc" in records[0], itertools.count())])
    val = [-1.0] * n_envs
    for r in records:
        if len(r["args"]["test_envs"]) == 2:
            v = (set(r["args"]["test_envs"]) - {t}).pop()
            val[v] = r[f"env{v}_in_acc"]
    val = val[:t] + val[t + 1:]
    if any(v == -1 for v in val):
        return None
    return {"val_acc": sum(val) / (n_envs - 1), "test_acc": tests[0][f"env{t}_in_acc"], "step": tests[0]["step"]}


def _leave_one_out_run(records: list[dict]) -> dict | None:
    by_step: dict[int, list[dict]] = {}
    for r in records:
        by_step.setdefault(r["step"], []).append(r)
    accs = [a for step in sorted(by_step) if (a := _leave_one_out_step(by_step[step])) is not None]
    return max(accs, key=lambda a: a["val_acc"]) if accs else None


RUN_ACC = {"training_domain": _training_domain_run, "oracle": _oracle_run, "leave_one_out": _leave_one_out_run}


def reference_sweep_accs(records: list[dict], method: str) -> dict[tuple[int, str, int], dict]:
    """(trial_seed, algorithm, test_env) -> the chosen run's {val_acc, test_acc, step, hparams_seed}."""
    groups: dict[tuple[int, str, int], list[dict]] = {}
    for r in records:
        for t in r["args"]["test_envs"]:
            groups.setdefault((r["args"]["trial_seed"], r["args"]["algorithm"], t), []).append(r)
    out = {}
    for key, group in groups.items():
        by_seed: dict[int, list[dict]] = {}
        for r in group:
            by_seed.setdefault(r["args"]["hparams_seed"], []).append(r)
        run_accs = []
        for seed in sorted(by_seed):
            acc = RUN_ACC[method](by_seed[seed])
            if acc is not None:
                run_accs.append({**acc, "hparams_seed": seed})
        ranked = sorted(run_accs, key=lambda a: _nan_low(a["val_acc"]))[::-1]
        if ranked:
            out[key] = ranked[0]
    return out


def reference_table(records: list[dict], method: str) -> dict[str, dict[str, dict[str, Any]]]:
    """{algorithm: {"<test env>": {"mean", "se", "n"}, "avg": mean of the means}} as collect_results prints it."""
    accs = reference_sweep_accs(records, method)
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for algorithm in sorted({a for _, a, _ in accs}):
        row: dict[str, dict[str, Any]] = {}
        for t in range(N_ENVS):
            data = [acc["test_acc"] for (s, a, e), acc in accs.items() if a == algorithm and e == t]
            if data:
                row[str(t)] = {"mean": 100 * np.mean(data), "se": 100 * np.std(np.array(data) / np.sqrt(len(data))),
                               "n": len(data)}
        if len(row) == N_ENVS:
            row["avg"] = {"mean": sum(cell["mean"] for cell in row.values()) / N_ENVS}
        table[algorithm] = row
    return table


# --- DomainBed-layout sweep directories --------------------------------------------------------------------------


def write_run(root: Path, algorithm: str, hparams_seed: int, trial_seed: int, test_envs: tuple[int, ...],
              accuracies: list[dict[str, float]], done: bool) -> str:
    """One DomainBed output dir (named by the md5 of its args, as sweep.py does): results.jsonl, out.txt, done."""
    args = {"algorithm": algorithm, "checkpoint_freq": None, "data_dir": "/data", "dataset": DATASET,
            "holdout_fraction": 0.2, "hparams": None, "hparams_seed": hparams_seed, "output_dir": "",
            "save_model_every_checkpoint": False, "seed": 12345 + hparams_seed, "skip_model_save": False, "steps": None,
            "task": "domain_generalization", "test_envs": list(test_envs), "trial_seed": trial_seed,
            "uda_holdout_fraction": 0}
    name = hashlib.md5(json.dumps(args, sort_keys=True).encode()).hexdigest()
    args["output_dir"] = str(root / name)
    lr = 10 ** -(2 + (hparams_seed * 7 + trial_seed) % 5 / 4)  # a function of (hparams_seed, trial_seed), as DomainBed's
    lines = [json.dumps({"args": args, "epoch": 0.1 * k, "hparams": {**HPARAMS, "lr": lr}, "loss": 0.3, "mem_gb": 0.1,
                         "step": 100 * k, "step_time": 0.02, **acc}, sort_keys=True) for k, acc in enumerate(accuracies)]
    (root / name).mkdir(parents=True)
    (root / name / "results.jsonl").write_text("\n".join(lines) + "\n")
    (root / name / "out.txt").write_text("")
    if done:
        (root / name / "done").write_text("done")
    return name


def random_sweep(root: Path, seed: int) -> list[dict]:
    """Two algorithms x two trial seeds x four hparams seeds x six test-env sets, accuracies on a coarse grid (many
    ties), about a third of the runs truncated (no `done`, fewer checkpoints). Returns the records written."""
    rng = random.Random(seed)
    records = []
    for algorithm, trial_seed, hparams_seed, test_envs in itertools.product(("ERM", "IRM"), (0, 1), range(4), ALL_TEST_ENVS):
        n_checkpoints = 4 if rng.random() > 0.35 else rng.randint(1, 3)
        accuracies = [{f"env{i}_{split}_acc": rng.choice((0.25, 0.5, 0.75)) for i in range(N_ENVS) for split in ("in", "out")}
                      for _ in range(n_checkpoints)]
        write_run(root, algorithm, hparams_seed, trial_seed, test_envs, accuracies, done=n_checkpoints == 4)
    for path in sorted(root.glob("*/results.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines()]
    return records


def analyze_json(root: Path, *extra: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["analyze", "--records", str(root), "--format", "json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_tables_equal(ours: dict[str, Any], reference: dict[str, dict[str, dict[str, Any]]]) -> None:
    assert set(ours) == set(reference)
    for algorithm, row in reference.items():
        assert set(ours[algorithm]) == set(row), algorithm
        for env, cell in row.items():
            assert ours[algorithm][env]["mean"] == pytest.approx(cell["mean"], abs=1e-9), (algorithm, env)
            if env != "avg":
                assert ours[algorithm][env]["se"] == pytest.approx(cell["se"], abs=1e-9), (algorithm, env)
                assert ours[algorithm][env]["n"] == cell["n"]


# --- tests ---------------------------------------------------------------------------------------------------------


def test_a_hand_computed_sweep_with_a_tie_and_a_truncated_run(tmp_path: Path) -> None:
    """Test env 2, one trial seed, ERM. Accuracies (out for validation, in for test) written out by hand:

    hparams_seed 0: done, 2 checkpoints: val (mean env0/env1 out) 0.6 then 0.7; test in 0.30 / 0.40; env2 out 0.50
    hparams_seed 1: done, 2 checkpoints: val 0.7 then 0.7 (a tie inside the run: step 0 wins); test 0.10 / 0.20;
                    env2 out 0.60 at its last checkpoint
    hparams_seed 2: truncated (no done, 1 checkpoint): val 0.5, test 0.90, env2 out 0.80

    training_domain: seeds 0 and 1 tie at 0.7; DomainBed keeps the higher hparams_seed, 1, at step 0: 10.0.
    oracle: last records: 0.50 (seed 0), 0.60 (seed 1), 0.80 (seed 2, truncated, still counted): 90.0.
    """
    root = tmp_path / "sweep"
    def acc(val: float, test_in: float, test_out: float) -> dict[str, float]:
        return {"env0_in_acc": 0.5, "env0_out_acc": val, "env1_in_acc": 0.5, "env1_out_acc": val,
                "env2_in_acc": test_in, "env2_out_acc": test_out}
    write_run(root, "ERM", 0, 0, (2,), [acc(0.6, 0.30, 0.9), acc(0.7, 0.40, 0.50)], done=True)
    write_run(root, "ERM", 1, 0, (2,), [acc(0.7, 0.10, 0.9), acc(0.7, 0.20, 0.60)], done=True)
    write_run(root, "ERM", 2, 0, (2,), [acc(0.5, 0.90, 0.80)], done=False)
    data = analyze_json(root)
    assert data["training_domain"][DATASET]["ERM"]["2"] == {"mean": pytest.approx(10.0), "se": 0.0, "n": 1}
    assert data["oracle"][DATASET]["ERM"]["2"] == {"mean": pytest.approx(90.0), "se": 0.0, "n": 1}
    assert data["leave_one_out"] == {}


@pytest.mark.parametrize("seed", range(6))
def test_three_tables_equal_domainbeds_rules_on_random_sweeps_with_ties_and_truncated_runs(tmp_path: Path, seed: int) -> None:
    records = random_sweep(tmp_path / "sweep", seed)
    data = analyze_json(tmp_path / "sweep")
    for method in ("training_domain", "leave_one_out", "oracle"):
        assert_tables_equal(data[method][DATASET], reference_table(records, method))


def test_every_groups_selected_hparams_seed_and_step_are_domainbeds(tmp_path: Path) -> None:
    """Every group's selected hparams_seed and step, not only the averages, for each of the three methods."""
    from fishr_tune.analysis.readers import gather_files
    from fishr_tune.analysis.table import selection_table, selections

    records = random_sweep(tmp_path / "sweep", 11)
    prepared = selection_table(gather_files(tmp_path / "sweep"))
    seed_of_run = prepared.drop_duplicates("run").set_index("run")["hparams_seed"]
    for method, frame in selections(prepared).items():
        reference = reference_sweep_accs(records, method)
        ours = {(int(r["trial_seed"]), r["algorithm"], int(r["test_env"])): r for r in frame.to_dict("records")}
        assert set(ours) == set(reference), method
        for key, expected in reference.items():
            chosen = ours[key]
            assert (int(seed_of_run[chosen["run"]]), int(chosen["step"])) == (expected["hparams_seed"], expected["step"]), (method, key)
            assert chosen["test_acc"] == expected["test_acc"]
