"""`fishr-tune inspect` on a real (tiny) `fishr-tune train` run: its JSON against the checkpoint's own model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from fishr_tune.cli import main
from fishr_tune.training import CHECKPOINT_FILE, CONFIG_FILE, Trainer, load_config_file, make_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("inspect") / "run"
    result = CliRunner().invoke(main, [
        "train", "--dataset", "ColoredMNIST-IRM", "--algorithm", "Fishr", "--steps", "4", "--checkpoint-freq", "2",
        "--hparams", '{"penalty_anneal_iters": 1}', "--output-dir", str(directory),
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return directory


def test_inspect_json_matches_the_checkpointed_model(run_dir: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(run_dir), "--format", "json", "--epsilon", "0.05"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["algorithm"] == "Fishr" and report["test_envs"] == [2]
    assert report["record_step"] == 3 and report["method"] == "dense" and report["epsilon"] == 0.05
    assert [d["name"] for d in report["domains"]] == ["+80%", "+90%"]
    assert len(report["pairs"]) == 4
    assert report["inconsistency"] == max(p["total"] for p in report["pairs"])
    for pair in report["pairs"]:
        assert pair["curvature"] == pytest.approx(0.05 * pair["generalized_eigenvalue"], rel=1e-12)

    # Independently: the trained model's mean cross-entropy on each training environment's in split.
    config = make_config({**load_config_file(run_dir / CONFIG_FILE), "device": "cpu"}, "test")
    trainer = Trainer(config)
    trainer.load_checkpoint(run_dir / CHECKPOINT_FILE)
    trainer.algorithm.eval()
    for domain, env in zip(report["domains"], trainer.train_envs):
        x, y = trainer.splits[env]["in"]
        with torch.no_grad():
            logits = trainer.algorithm.predict(x).to(torch.float64)
        assert domain["n"] == len(y)
        assert domain["risk"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    gap = report["domains"][1]["risk"] - report["domains"][0]["risk"]
    pair = next(p for p in report["pairs"] if (p["a"], p["b"]) == ("+80%", "+90%"))
    assert pair["risk_gap"] == pytest.approx(gap, rel=1e-12)


def test_inspect_table_names_the_score(run_dir: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(run_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "exact (dense)" in result.output and "diagonal (Fishr's v_e)" in result.output


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/run"], "is not a directory"),
    (["--epsilon", "-1"], "--epsilon: expected a positive number"),
])
def test_inspect_bad_input_exits_2(run_dir: Path, args: list[str], message: str) -> None:
    argv = ["inspect", *args] if args[0].startswith("/") else ["inspect", str(run_dir), *args]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2
    assert message in result.output


def test_inspect_without_checkpoint_exits_2(tmp_path: Path, run_dir: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text((run_dir / CONFIG_FILE).read_text())
    result = CliRunner().invoke(main, ["inspect", str(tmp_path)])
    assert result.exit_code == 2
    assert f"{tmp_path / CHECKPOINT_FILE} does not exist" in result.output


def test_analyze_scores_only_models_whose_checkpoint_is_at_the_selected_step(run_dir: Path) -> None:
    import pandas as pd

    from fishr_tune.analysis.inspect import inspect_run, score_selected

    base = {"dataset": "ColoredMNIST-IRM", "algorithm": "Fishr", "test_env": 2, "trial_seed": 0}
    selected = pd.DataFrame([{**base, "run": "run", "step": 3}, {**base, "run": "run", "step": 1},
                             {**base, "run": "gone", "step": 3}])
    exact, earlier, missing = score_selected(selected, run_dir.parent, epsilon=0.05)
    assert exact.inconsistency == inspect_run(run_dir, epsilon=0.05).report.inconsistency
    assert earlier.inconsistency is None and "checkpoint is at step 3" in earlier.note
    assert missing.inconsistency is None and "no checkpoint at" in missing.note
    (unreachable,) = score_selected(selected.iloc[:1], None)
    assert unreachable.inconsistency is None and "no checkpoint reachable" in unreachable.note
