"""A tiny sweep recorded in MLflow -> `fishr-tune analyze` -> best.yaml -> `fishr-tune train --config best.yaml`
reproduces the selected checkpoint's accuracies exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from fishr_tune import records
from fishr_tune.cli import main
from fishr_tune.sweep.runner import run_sweep
from fishr_tune.sweep.spec import build_spec


@pytest.mark.slow  # ~100 s on the 2-core machine: a 4-trial sweep plus one rerun
def test_sweep_analyze_best_config_and_rerun_reproduce_the_selected_checkpoint(local_ray, tiny_sweep, tmp_path: Path) -> None:
    uri = tiny_sweep["tracking_uri"]
    spec = build_spec({**tiny_sweep, "name": "quick"}, "quick.yaml")
    summary = run_sweep(spec, stream=open(os.devnull, "w"))
    assert summary.finished == 4 and summary.mlflow_pending == 0

    runner = CliRunner()
    result = runner.invoke(main, ["analyze", "--experiment", "quick", "--tracking-uri", uri, "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["training_domain"]["ColoredMNIST-IRM"]) == {"ERM", "Fishr"}
    assert data["training_domain"]["ColoredMNIST-IRM"]["Fishr"]["2"]["n"] == 1

    best = tmp_path / "best.yaml"
    plots = tmp_path / "plots"
    result = runner.invoke(main, ["analyze", "--experiment", "quick", "--tracking-uri", uri, "--selection", "training_domain",
                                  "--algorithm", "Fishr", "--best-config", str(best), "--plots", str(plots),
                                  "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "| Fishr |" in result.stdout and "lambda=" in result.stdout
    header = best.read_text().splitlines()[1]  # "# selected run <trial> at step <s>: validation v%, test t%"
    run_id, step = header.split("selected run ")[1].split(" at step ")[0], int(header.split(" at step ")[1].split(":")[0])

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("quick").experiment_id
    chosen = client.search_runs([experiment], filter_string=f"tags.ray_trial_id = '{run_id}'")[0]
    parent = client.get_run(chosen.data.tags["mlflow.parentRunId"])
    assert any(a.path == "analyze" for a in client.list_artifacts(parent.info.run_id))
    assert sorted(p.name for p in plots.iterdir()) == ["hparams_ColoredMNIST-IRM_Fishr.png",
                                                       "val_vs_test_ColoredMNIST-IRM_Fishr_te2_ts0.png"]
    logged = {key: {m.step: m.value for m in client.get_metric_history(chosen.info.run_id, key)}[step]
              for key in chosen.data.metrics if key.startswith("env")}

    config = yaml.safe_load(best.read_text())
    assert config["hparams"]["lambda"] == json.loads(chosen.data.params["lambda"])
    out = tmp_path / "rerun"
    subprocess.run([sys.executable, "-m", "fishr_tune.cli", "train", "--config", str(best), "--output-dir", str(out)],
                   check=True, capture_output=True, text=True, timeout=600)
    rerun = {r[records.STEP]: r for r in records.read(out / records.RESULTS_FILE)}
    assert {key: rerun[step][key] for key in logged} == logged
