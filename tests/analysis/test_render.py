"""Results tables in DomainBed's shape: markdown, LaTeX, JSON, and the selected hyperparameters."""

from __future__ import annotations

import json

import pandas as pd

from fishr_tune.analysis import render as report


def summary() -> pd.DataFrame:
    rows = [
        {"dataset": "ColoredMNIST-IRM", "algorithm": "ERM", "test_env": "2", "mean": 27.123, "se": 1.04, "n": 3},
        {"dataset": "ColoredMNIST-IRM", "algorithm": "ERM", "test_env": "avg", "mean": 27.123, "se": 1.04, "n": 3},
        {"dataset": "ColoredMNIST-IRM", "algorithm": "Fishr", "test_env": "0", "mean": 70.0, "se": 0.0, "n": 1},
        {"dataset": "ColoredMNIST-IRM", "algorithm": "Fishr", "test_env": "2", "mean": 68.46, "se": 0.55, "n": 3},
    ]
    return pd.DataFrame(rows)


def test_grid_names_environments_and_marks_missing_cells() -> None:
    header, rows = report.result_grid(summary(), "ColoredMNIST-IRM")
    assert header == ["Algorithm", "+80%", "-90%", "Avg"]
    assert rows == [["ERM", "X", "27.1 ± 1.0", "27.1 ± 1.0"], ["Fishr", "70.0 ± 0.0", "68.5 ± 0.6", "X"]]


def test_markdown_table() -> None:
    text = report.render({"training_domain": summary()}, "markdown")
    lines = text.splitlines()
    assert lines[0].startswith("Model selection: training-domain validation — ColoredMNIST-IRM")
    assert lines[1] == "| Algorithm | +80% | -90% | Avg |" and lines[2] == "|---|---|---|---|"
    assert lines[3] == "| ERM | X | 27.1 ± 1.0 | 27.1 ± 1.0 |"


def test_latex_table_escapes_specials() -> None:
    text = report.render({"oracle": summary()}, "latex")
    assert text.startswith("% Model selection: test-domain validation (oracle)")
    assert r"\begin{tabular}{lccc}" in text and r"Algorithm & +80\% & -90\% & Avg \\" in text
    assert r"ERM & X & 27.1 $\pm$ 1.0 & 27.1 $\pm$ 1.0 \\" in text and text.endswith(r"\end{tabular}")


def test_json_shape() -> None:
    data = json.loads(report.render({"training_domain": summary(), "oracle": summary().iloc[:0]}, "json"))
    assert data["training_domain"]["ColoredMNIST-IRM"]["ERM"] == {
        "2": {"mean": 27.123, "se": 1.04, "n": 3}, "avg": {"mean": 27.123, "se": 1.04, "n": 3}}
    assert data["oracle"] == {}


def test_a_method_without_results_says_so() -> None:
    assert "no group has the runs this method needs" in report.render({"leave_one_out": summary().iloc[:0]}, "markdown")


def test_selected_hyperparameters_show_the_varying_ones() -> None:
    selected = pd.DataFrame([{"dataset": "ColoredMNIST-IRM", "algorithm": "Fishr", "test_env": 2, "trial_seed": 0,
                              "run": "t_1", "config": json.dumps({"lambda": 1234.5678, "lr": 0.001, "ema": 0.95}),
                              "step": 80, "val_acc": 0.71234, "test_acc": 0.6}])
    rows = report.selected_hparams_table(selected, "ColoredMNIST-IRM", {("ColoredMNIST-IRM", "Fishr"): ["lambda", "lr"]})
    assert rows == [["Fishr", "-90%", "0", "t_1", "80", "71.23", "60.00", "lambda=1235, lr=0.001"]]
    text = report.render_selected({"training_domain": selected}, "latex", None)
    assert r"t\_1" in text and "ema=0.95" in text
