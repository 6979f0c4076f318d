from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from fishr_tune.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_train_prints_rows_and_writes_records(tmp_path) -> None:
    out = tmp_path / "run"
    result = invoke("train", "--dataset", "ColoredMNIST-IRM", "--algorithm", "ERM", "--test-envs", "2",
                    "--steps", "30", "--checkpoint-freq", "10", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert "embedded default" in result.output and "env2 '-90%': 834" in result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if line.startswith("step"))
    assert "env2_in*" in header and "env0_in " in header
    rows = [line for line in lines if line[:1].isdigit()]
    assert [row.split()[0] for row in rows] == ["0", "10", "20", "29"]
    assert len((out / "results.jsonl").read_text().splitlines()) == 4


def test_config_file_and_flag_precedence(tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"dataset": "ColoredMNIST-IRM", "steps": 50, "checkpoint_freq": 25,
                                      "hparams": {"lr": 0.01}, "output_dir": str(tmp_path / "run")}))
    result = invoke("train", "--config", str(config), "--steps", "20", "--hparams", '{"batch_size": 16}')
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["steps"] == 20 and saved["hparams"]["lr"] == 0.01 and saved["hparams"]["batch_size"] == 16
    # the saved config reruns as is
    rerun = invoke("train", "--config", str(tmp_path / "run" / "config.yaml"), "--output-dir", str(tmp_path / "again"))
    assert rerun.exit_code == 0, rerun.output
    first = (tmp_path / "run" / "results.jsonl").read_text().splitlines()[-1]
    again = (tmp_path / "again" / "results.jsonl").read_text().splitlines()[-1]
    assert json.loads(first)["env2_in_acc"] == json.loads(again)["env2_in_acc"]


def test_bad_input_exits_2_with_one_line(tmp_path) -> None:
    cases = [
        (["--algorithm", "Fisher"], "unknown algorithm 'Fisher'; valid algorithms:"),
        (["--dataset", "PAC"], "unknown dataset 'PAC'"),
        (["--test-envs", "x"], "--test-envs: expected comma-separated"),
        (["--test-envs", "5"], "environment 5 out of range"),
        (["--hparams", "{lr: 1}"], "--hparams: not valid JSON"),
        (["--hparams", '{"lambda": 1}'], "unknown hyperparameter 'lambda' for ERM"),
        (["--config", str(tmp_path / "missing.yaml")], "missing.yaml: cannot read"),
        (["--data-dir", str(tmp_path)], "no MNIST under"),
        (["--steps", "0"], "key 'steps'"),
    ]
    for args, message in cases:
        result = invoke("train", "--output-dir", str(tmp_path / "never"), *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "never" / "results.jsonl").exists()


def test_malformed_yaml_exits_2(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    result = invoke("train", "--config", str(bad))
    assert result.exit_code == 2 and "bad.yaml: not valid YAML" in result.output
    bad.write_text("- a\n- b\n")
    result = invoke("train", "--config", str(bad))
    assert result.exit_code == 2 and "expected a mapping" in result.output


def test_train_help_names_every_registered_algorithm() -> None:
    import re

    from fishr_tune.algorithms import ALGORITHMS

    named = set(re.findall(r"[A-Za-z]+", invoke("train", "--help").output))
    assert sorted(set(ALGORITHMS) - named) == []


def test_help_lists_what_the_registries_hold_when_it_is_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """One new file registering an algorithm (or one catalog entry) is all `--help` needs to list it."""
    from fishr_tune.algorithms import ALGORITHMS
    from fishr_tune.cli.common import listing
    from fishr_tune.data import DATASET_ENVIRONMENTS
    from fishr_tune.data.catalog import IMAGE_DATASETS

    monkeypatch.setitem(ALGORITHMS, "FreshlyRegistered", ALGORITHMS["ERM"])
    monkeypatch.setitem(DATASET_ENVIRONMENTS, "FreshDataset", ("a", "b"))
    monkeypatch.setitem(IMAGE_DATASETS, "FreshImages", IMAGE_DATASETS["PACS"])
    train_help = " ".join(invoke("train", "--help").output.split())
    assert "IRM, Mixup, VREx or FreshlyRegistered." in train_help and "RotatedMNIST or FreshDataset." in train_help
    assert "FreshImages (needs internet)" in " ".join(invoke("data", "download", "--help").output.split())
    assert listing(["B", "A", "C"], "A") == "A (default), B or C" and listing(["A"], "A") == "A (default)"


@pytest.mark.parametrize("algorithm", ["CORAL", "MMD", "DANN", "CDANN", "Fish", "IDGM", "GroupDRO", "Mixup"])
def test_every_baseline_trains_through_the_cli(tmp_path, algorithm: str) -> None:
    out = tmp_path / "run"
    result = invoke("train", "--algorithm", algorithm, "--steps", "4", "--checkpoint-freq", "2", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 2, 3]
    assert all(r["args"]["algorithm"] == algorithm and 0.0 <= r["env2_in_acc"] <= 1.0 for r in records)
