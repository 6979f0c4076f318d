"""Issue #14's hostile inputs, one test each: exit code 2, one `Error:` line naming the file and key, no traceback,
and nothing expensive (no Ray, no data, no training) before the refusal.

Every case runs in-process through click (the same `main` the console script calls; an exception other than the
refusal propagates and fails the test) and, marked slow, through `python -m fishr_tune.cli` in a subprocess with
its own HOME and Ray dir. `test_each_command_refuses_through_the_real_entry_point` keeps one subprocess case per
command in the default suite.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from fishr_tune import records
from fishr_tune.cli import main
from fishr_tune.hparams import default_hparams

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


class ExpensiveWorkStarted(AssertionError):
    """Raised by the stand-ins for data loading, Ray and training: a refusal must come before any of them."""


@pytest.fixture
def no_expensive_work(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from fishr_tune.sweep import runner

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ExpensiveWorkStarted("validation passed: a sweep would load its data and start Ray")

    monkeypatch.setattr(runner, "build_datasets", refuse)
    monkeypatch.setattr(runner, "ensure_ray", refuse)
    yield


def run_in_process(args: list[str]) -> Outcome:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return Outcome(result.exit_code, result.stdout, result.stderr)


def run_subprocess(args: list[str], scratch: Path) -> Outcome:
    """The real entry point, with HOME, TMPDIR and Ray's temp dir under `scratch` (checked for Ray sessions)."""
    for sub in ("home", "tmp", "ray"):
        (scratch / sub).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(scratch / "home"), "TMPDIR": str(scratch / "tmp"), "RAY_TMPDIR": str(scratch / "ray"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-m", "fishr_tune.cli", *args], capture_output=True, text=True, env=env,
                            timeout=120)
    return Outcome(result.returncode, result.stdout, result.stderr)


def assert_refused(outcome: Outcome, *expected: str, warnings_allowed: bool = False) -> str:
    """Exit 2, no traceback, exactly one `Error:` line (the only stderr line unless warnings are allowed)."""
    assert outcome.code == 2, (outcome.code, outcome.stderr[-2000:])
    assert "Traceback" not in outcome.stderr + outcome.stdout
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, lines
    if not warnings_allowed:
        assert lines == errors
    for text in expected:
        assert text in errors[0], (text, errors[0])
    return errors[0]


def nothing_written(tmp_path: Path) -> bool:
    """No record, checkpoint or sweep file: a refused train may leave its (empty) output folder, nothing more."""
    return not any(p.is_file() for p in (tmp_path / "run").rglob("*")) and not (tmp_path / "sweeps").exists()


def no_ray_session(scratch: Path) -> bool:
    return not any((scratch / "ray").glob("**/session_*")) and not any((scratch / "tmp").glob("**/session_*"))


# ---- the inputs ---------------------------------------------------------------------------------------------------

def tiny_sweep(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    values = yaml.safe_load((SPACES / "quickstart.yaml").read_text())
    values = copy.deepcopy(values)
    values.update(storage_path=str(tmp_path / "sweeps"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return values


def write_yaml(path: Path, values: Any) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


def garbage_mnist(root: Path, truncated: bool = False) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        if truncated:  # a genuine header (10 images of 28 x 28) and only half the pixels
            dims = [10, 28, 28] if "images" in name else [10]
            magic = 0x803 if "images" in name else 0x801
            body = b"".join(d.to_bytes(4, "big") for d in dims)
            (raw / name).write_bytes(magic.to_bytes(4, "big") + body + b"\0" * (10 * 28 * 14 if "images" in name else 5))
        else:
            (raw / name).write_bytes(b"not an idx file" * 7)
    return root


def results_dir(root: Path) -> Path:
    """One fishr-tune train run of two records, enough for analyze to select and write a best config."""
    hparams = default_hparams("ERM", "ColoredMNIST-IRM")
    args = {"dataset": "ColoredMNIST-IRM", "algorithm": "ERM", "test_envs": [2], "trial_seed": 0, "hparams_seed": 0,
            "seed": 0, "holdout_fraction": 0.2, "checkpoint_freq": 1, "label_noise": 0.25, "steps": 2}
    (root / "run").mkdir(parents=True)
    for step in (0, 1):
        accuracies = {i: {"in": 0.5, "out": 0.6} for i in range(3)}
        rec = records.make_record(step=step, epoch=0.1 * step, losses={"loss": 1.0}, step_time=0.01, accuracies=accuracies,
                                  hparams=hparams, args=args)
        rec[records.VAL_ACC] = records.validation_accuracy(rec)
        records.append(root / "run" / records.RESULTS_FILE, rec)
    return root


# Each case: (id, build(tmp_path) -> (argv, the texts the one error line must hold), warnings allowed).
Case = Callable[[Path], "tuple[list[str], list[str]]"]
CASES: dict[str, tuple[Case, bool]] = {}


def case(name: str, warnings_allowed: bool = False) -> Callable[[Case], Case]:
    def register(build: Case) -> Case:
        CASES[name] = (build, warnings_allowed)
        return build
    return register


@case("data check: an invalid PACS layout")
def _(tmp: Path):
    from fishr_tune.data.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset("PACS", tmp / "data", classes=("a", "b"), images_per_class=1, size=(8, 8))
    (root / "photo" / "b").rename(tmp / "moved")  # one environment lacks a class: the folder would not load
    return ["data", "check", "--data-dir", str(tmp / "data"), "--dataset", "PACS"], ["PACS: invalid", str(root)]


@case("data check: a named dataset that is missing")
def _(tmp: Path):
    (tmp / "data").mkdir()
    return ["data", "check", "--data-dir", str(tmp / "data"), "--dataset", "VLCS"], ["VLCS: missing"]


@case("train: garbage MNIST files in --data-dir")
def _(tmp: Path):
    garbage_mnist(tmp / "mnist")
    return (["train", "--data-dir", str(tmp / "mnist"), "--output-dir", str(tmp / "run")],
            ["train-images-idx3-ubyte", "not an MNIST IDX file"])


@case("train: a truncated MNIST file")
def _(tmp: Path):
    garbage_mnist(tmp / "mnist", truncated=True)
    return ["train", "--data-dir", str(tmp / "mnist"), "--output-dir", str(tmp / "run")], ["train-images-idx3-ubyte", "truncated"]


@case("train: a non-UTF-8 --config")
def _(tmp: Path):
    (tmp / "c.yaml").write_bytes(b"steps: 10\nalgorithm: \xff\xfeERM\n")
    return ["train", "--config", str(tmp / "c.yaml")], [str(tmp / "c.yaml"), "not a UTF-8 text file"]


@case("train: an invalid date in --config")
def _(tmp: Path):
    (tmp / "c.yaml").write_text("steps: 10\noutput_dir: 2020-13-45\n")
    return ["train", "--config", str(tmp / "c.yaml")], [str(tmp / "c.yaml"), "not valid YAML"]


@case("train: duplicate key in --config (steps: 40 then steps: 4000000)")
def _(tmp: Path):
    (tmp / "c.yaml").write_text("steps: 40\ncheckpoint_freq: 10\nsteps: 4000000\n")
    return ["train", "--config", str(tmp / "c.yaml")], [str(tmp / "c.yaml"), "duplicate key 'steps'", "line 3"]


@case("train: --output-dir under a file")
def _(tmp: Path):
    (tmp / "a_file").write_text("x")
    return ["train", "--steps", "2", "--output-dir", str(tmp / "a_file" / "run")], ["--output-dir", str(tmp / "a_file" / "run")]


@case("train: lr 0 in --config")
def _(tmp: Path):
    config = write_yaml(tmp / "c.yaml", {"steps": 10, "hparams": {"lr": 0}, "output_dir": str(tmp / "run")})
    return ["train", "--config", str(config)], [str(config), "'lr' must be > 0"]


@case("train: batch_size 1e12 in --hparams")
def _(tmp: Path):
    return (["train", "--hparams", '{"batch_size": 1e12}', "--output-dir", str(tmp / "run")],
            ["--hparams", "'batch_size' must be >= 1 and <= 65536"])


@case("train: hidden_dim 0 in --hparams")
def _(tmp: Path):
    return ["train", "--hparams", '{"hidden_dim": 0}', "--output-dir", str(tmp / "run")], ["--hparams", "'hidden_dim' must be >= 1"]


@case("sweep: duplicate key (steps: 40 then steps: 4000000)")
def _(tmp: Path):
    text = yaml.safe_dump(tiny_sweep(tmp), sort_keys=False) + "steps: 4000000\n"
    (tmp / "s.yaml").write_text(text)
    return ["sweep", str(tmp / "s.yaml")], [str(tmp / "s.yaml"), "duplicate key 'steps'"]


@case("sweep: a billion-laughs alias bomb")
def _(tmp: Path):
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    (tmp / "s.yaml").write_text("name: bomb\n" + "\n".join(lines) + "\ndescription: *a9\n")
    return ["sweep", str(tmp / "s.yaml")], [str(tmp / "s.yaml"), "anchors and aliases"]


@case("sweep: a 50 MB value")
def _(tmp: Path):
    (tmp / "s.yaml").write_text("name: " + "x" * 50_000_000 + "\n")
    return ["sweep", str(tmp / "s.yaml")], [str(tmp / "s.yaml"), "too large for a settings file"]


@case("sweep: a 900 KB bad value is quoted, not echoed")
def _(tmp: Path):
    write_yaml(tmp / "s.yaml", tiny_sweep(tmp, dataset="D" * 900_000))
    return ["sweep", str(tmp / "s.yaml")], [str(tmp / "s.yaml"), "'dataset'", "characters)"]


@case("sweep: ema 5")
def _(tmp: Path):
    write_yaml(tmp / "s.yaml", tiny_sweep(tmp, algorithms=["ERM", "Fishr"], per_algorithm__Fishr__ema=5))
    return ["sweep", str(tmp / "s.yaml")], [str(tmp / "s.yaml"), "'per_algorithm.Fishr.ema'", "< 1"]


@case("sweep: an lr range reaching 0 and below")
def _(tmp: Path):
    write_yaml(tmp / "s.yaml", tiny_sweep(tmp, hyperparameters__lr={"uniform": [-1.0, 0.01]}))
    return ["sweep", str(tmp / "s.yaml")], [str(tmp / "s.yaml"), "'hyperparameters.lr'", "> 0"]


@case("sweep: a batch_size range from 0")
def _(tmp: Path):
    write_yaml(tmp / "s.yaml", tiny_sweep(tmp, hyperparameters__batch_size={"int": [0, 64]}))
    return ["sweep", str(tmp / "s.yaml")], [str(tmp / "s.yaml"), "'hyperparameters.batch_size'", ">= 1"]


@case("sweep: search.seed 429197")
def _(tmp: Path):
    write_yaml(tmp / "s.yaml", tiny_sweep(tmp, search__seed=429_197))
    return ["sweep", str(tmp / "s.yaml")], [str(tmp / "s.yaml"), "'search.seed'"]


@case("sweep: scheduler.brackets 1000000 (a float power that overflowed)")
def _(tmp: Path):
    write_yaml(tmp / "s.yaml", tiny_sweep(tmp, scheduler__brackets=1_000_000))
    return ["sweep", str(tmp / "s.yaml")], [str(tmp / "s.yaml"), "'scheduler.brackets'", "step inf"]


@case("sweep: resources.cpu 1000 on a local Ray")
def _(tmp: Path):
    write_yaml(tmp / "s.yaml", tiny_sweep(tmp, resources={"cpu": 1000}))
    return ["sweep", str(tmp / "s.yaml")], [str(tmp / "s.yaml"), "'resources.cpu'", "1000 CPUs"]


@case("sweep: storage_path is a file")
def _(tmp: Path):
    (tmp / "a_file").write_text("x")
    write_yaml(tmp / "s.yaml", {**tiny_sweep(tmp), "storage_path": str(tmp / "a_file")})
    return ["sweep", str(tmp / "s.yaml")], [str(tmp / "s.yaml"), "'storage_path'", "is a file"]


@case("sweep: a typo'd tracking URI scheme")
def _(tmp: Path):
    write_yaml(tmp / "s.yaml", {**tiny_sweep(tmp), "tracking_uri": f"sqlte:///{tmp / 'mlflow.db'}"})
    return ["sweep", str(tmp / "s.yaml")], [str(tmp / "s.yaml"), "'tracking_uri'", "'sqlte:'"]


@case("analyze: a garbage parquet export")
def _(tmp: Path):
    (tmp / "x.parquet").write_bytes(b"PAR1 not really PAR1")
    return ["analyze", "--records", str(tmp / "x.parquet")], ["--records", str(tmp / "x.parquet"), "not a readable parquet"]


@case("analyze: a garbage sqlite store")
def _(tmp: Path):
    (tmp / "mlflow.db").write_bytes(b"no database here" * 64)
    return (["analyze", "--experiment", "x", "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"],
            ["--tracking-uri", "not an SQLite database"])


@case("analyze: non-JSON, array and non-UTF-8 lines", warnings_allowed=True)
def _(tmp: Path):
    (tmp / "runs" / "r").mkdir(parents=True)
    (tmp / "runs" / "r" / "results.jsonl").write_bytes(b"not json\n[1, 2]\n\xff\xfe\n")
    return ["analyze", "--records", str(tmp / "runs")], ["no records in", str(tmp / "runs")]


@case("analyze: --best-config under a file")
def _(tmp: Path):
    results_dir(tmp / "runs")
    (tmp / "a_file").write_text("x")
    return (["analyze", "--records", str(tmp / "runs"), "--best-config", str(tmp / "a_file" / "best.yaml")],
            ["--best-config", str(tmp / "a_file"), "is a file"])


@case("mlflow-sync: a corrupt journal settings file")
def _(tmp: Path):
    (tmp / "sweep" / "mlflow").mkdir(parents=True)
    (tmp / "sweep" / "mlflow" / "settings.json").write_text('{"tracking_uri": "sqlite:///x.db", "experi')
    return ["mlflow-sync", str(tmp / "sweep")], [str(tmp / "sweep" / "mlflow" / "settings.json")]


@case("mlflow-sync: a journal settings file without its experiment")
def _(tmp: Path):
    (tmp / "sweep" / "mlflow").mkdir(parents=True)
    (tmp / "sweep" / "mlflow" / "settings.json").write_text('{"tracking_uri": "sqlite:///x.db"}')
    return ["mlflow-sync", str(tmp / "sweep")], ["settings.json", "key 'experiment'"]


@case("reproduce: garbage MNIST files in --data-dir")
def _(tmp: Path):
    garbage_mnist(tmp / "mnist")
    return (["reproduce", "colored-mnist-irm", "--no-ray", "--algorithms", "ERM", "--restarts", "1", "--steps", "2",
             "--data-dir", str(tmp / "mnist")], ["train-images-idx3-ubyte", "not an MNIST IDX file"])


@case("reproduce: --output under a file")
def _(tmp: Path):
    (tmp / "a_file").write_text("x")
    return (["reproduce", "colored-mnist-irm", "--no-ray", "--algorithms", "ERM", "--restarts", "1", "--steps", "2",
             "--output", str(tmp / "a_file" / "out.json")], ["--output", str(tmp / "a_file"), "is a file"])


# ---- the tests ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_refused_in_process(name: str, tmp_path: Path, no_expensive_work: None) -> None:
    build, warnings_allowed = CASES[name]
    args, expected = build(tmp_path)
    assert_refused(run_in_process(args), *expected, warnings_allowed=warnings_allowed)
    assert nothing_written(tmp_path)


def check_through_the_real_entry_point(name: str, tmp_path: Path) -> None:
    build, warnings_allowed = CASES[name]
    args, expected = build(tmp_path)
    assert_refused(run_subprocess(args, tmp_path / "scratch"), *expected, warnings_allowed=warnings_allowed)
    assert no_ray_session(tmp_path / "scratch")
    assert nothing_written(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_refused_through_the_real_entry_point(name: str, tmp_path: Path) -> None:
    check_through_the_real_entry_point(name, tmp_path)


# train and sweep files go through the real entry point in tests/test_hostile_inputs_properties.py
ONE_PER_COMMAND = [
    "data check: an invalid PACS layout", "train: garbage MNIST files in --data-dir", "analyze: a garbage parquet export",
    "mlflow-sync: a corrupt journal settings file", "reproduce: --output under a file",
]


@pytest.mark.parametrize("name", ONE_PER_COMMAND)
def test_each_command_refuses_through_the_real_entry_point(name: str, tmp_path: Path) -> None:
    check_through_the_real_entry_point(name, tmp_path)


def test_data_check_still_exits_0_on_an_incomplete_but_loadable_dataset(tmp_path: Path) -> None:
    from fishr_tune.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset("PACS", tmp_path, classes=("a", "b"), images_per_class=1, size=(8, 8))
    outcome = run_in_process(["data", "check", "--data-dir", str(tmp_path), "--dataset", "PACS"])
    assert outcome.code == 0 and "incomplete" in outcome.stdout, outcome.stderr


def test_data_check_of_an_invalid_layout_still_prints_its_table_and_problems(tmp_path: Path) -> None:
    build, _ = CASES["data check: an invalid PACS layout"]
    args, _ = build(tmp_path)
    outcome = run_in_process(args)
    assert outcome.code == 2 and "invalid" in outcome.stdout and "PACS: " in outcome.stdout


def test_a_bad_hyperparameter_is_named_where_it_was_written(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "c.yaml", {"steps": 10, "hparams": {"lr": -1, "batch_size": 16}})
    both = run_in_process(["train", "--config", str(config), "--hparams", '{"batch_size": 0}', "--output-dir", str(tmp_path / "r")])
    assert_refused(both, f"{config}: key 'hparams': hyperparameter 'lr' must be > 0")
    config.write_text(yaml.safe_dump({"steps": 10, "hparams": {"lr": 0.01}}))
    flag = run_in_process(["train", "--config", str(config), "--hparams", '{"batch_size": 0}', "--output-dir", str(tmp_path / "r")])
    assert_refused(flag, "--hparams: hyperparameter 'batch_size' must be >= 1")
    config.write_text("steps: 10\nhparams: 5\n")
    not_a_mapping = run_in_process(["train", "--config", str(config), "--hparams", '{"lr": 0.01}', "--output-dir", str(tmp_path / "r")])
    assert_refused(not_a_mapping, str(config), "'hparams'")
