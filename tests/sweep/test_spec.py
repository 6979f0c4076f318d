"""The search-space YAML: shipped files validate, every kind of mistake is one ConfigError line naming file and key."""

from __future__ import annotations

import copy
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fishr_tune.errors import ConfigError
from fishr_tune.space import Distribution
from fishr_tune.sweep.spec import SweepSpec, build_spec, load_spec

SEARCH_SPACES = Path(__file__).resolve().parents[2] / "search_spaces"

VALID: dict[str, Any] = {
    "name": "unit",
    "dataset": "ColoredMNIST-IRM",
    "algorithms": ["ERM", "Fishr"],
    "test_envs": [2],
    "trial_seeds": [0, 1],
    "steps": 600,
    "checkpoint_freq": 100,
    "hyperparameters": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}, "batch_size": {"choice": [32, 64]}},
    "per_algorithm": {"Fishr": {"lambda": 1000, "ema": {"uniform": [0.9, 0.99]}, "penalty_anneal_iters": {"int": [0, 500]}}},
    "search": {"algorithm": "tpe", "num_samples": 4, "seed": 0},
    "scheduler": {"type": "asha", "grace_period": 200, "reduction_factor": 3},
    "resources": {"cpu": 1, "gpu": 0.5},
    "storage_path": "/tmp/x",
    "tracking_uri": "sqlite:///mlflow.db",
    "max_failures": 1,
}


def write(tmp_path: Path, values: Any, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(values if isinstance(values, str) else yaml.safe_dump(values), encoding="utf-8")
    return path


def with_change(path: str, value: Any) -> dict[str, Any]:
    """VALID with the value at a dotted path replaced (value DELETE removes the key)."""
    values = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    node = values
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return values


DELETE = object()


@pytest.mark.parametrize("name", ["quickstart", "colored_mnist_fishr", "colored_mnist_erm", "rotated_mnist_fishr", "rotated_mnist_erm"])
def test_shipped_search_spaces_validate(name: str) -> None:
    spec = load_spec(SEARCH_SPACES / f"{name}.yaml")
    assert spec.name == name
    if name == "quickstart":
        assert [g.key for g in spec.groups] == ["ERM/te2/ts0", "Fishr/te2/ts0"]
        assert spec.settings.resources.gpu == 0
    else:  # DomainBed's protocol: every env alone x 3 trial seeds, GPU-sized
        n_envs = 3 if "colored" in name else 6
        assert len(spec.groups) == n_envs * 3
        assert spec.settings.steps == 5001 and spec.settings.checkpoint_freq == 100
        assert spec.settings.resources.gpu > 0
        assert spec.spaces[spec.settings.algorithms[0]]["batch_size"] == Distribution("logint", 8, 512)


@pytest.mark.parametrize("path", sorted(SEARCH_SPACES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_search_space_says_what_it_asks(path: Path) -> None:
    """The description becomes the MLflow experiment's: a shipped sweep without one opens on a bare page."""
    description = load_spec(path).settings.description
    assert description and len(description.split()) >= 8 and "\n" not in description  # a folded sentence, not a stub


def test_valid_file_resolves_groups_and_per_algorithm_spaces(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, VALID))
    assert [g.key for g in spec.groups] == ["ERM/te2/ts0", "ERM/te2/ts1", "Fishr/te2/ts0", "Fishr/te2/ts1"]
    assert spec.total_samples == 16
    # Fishr's own names only reach Fishr; shared names reach both.
    assert set(spec.spaces["ERM"]) == {"lr", "batch_size"}
    assert spec.spaces["Fishr"]["lambda"] == 1000
    assert spec.spaces["Fishr"]["penalty_anneal_iters"] == Distribution("int", 0, 500)


def test_all_and_pairs_expand_test_environments(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, with_change("test_envs", "all")))
    assert sorted({g.test_envs for g in spec.groups}) == [(0,), (1,), (2,)]
    spec = load_spec(write(tmp_path, with_change("test_envs", "pairs")))
    assert sorted({g.test_envs for g in spec.groups}) == [(0, 1), (0, 2), (1, 2)]
    spec = load_spec(write(tmp_path, with_change("test_envs", [[0, 1], 2])))
    assert sorted({g.test_envs for g in spec.groups}) == [(0, 1), (2,)]


def test_a_hyperparameter_of_only_one_listed_algorithm_is_accepted_in_the_shared_section(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, with_change("hyperparameters.ema", {"uniform": [0.9, 0.95]})))
    assert "ema" in spec.spaces["Fishr"] and "ema" not in spec.spaces["ERM"]


MISTAKES = [
    # (what, dotted path, bad value, text the message must contain)
    ("unknown top-level key", "learning_rate", 0.1, "unknown key 'learning_rate'"),
    ("unknown nested key", "search.samples", 4, "unknown key 'search.samples'"),
    ("wrong type", "steps", "many", "'steps'"),
    ("wrong type in a list", "trial_seeds", ["zero"], "'trial_seeds[0]'"),
    ("empty range", "hyperparameters.lr", {"uniform": [0.1, 0.1]}, "low < high"),
    ("inverted range", "per_algorithm.Fishr.ema", {"uniform": [0.99, 0.9]}, "'per_algorithm.Fishr.ema'"),
    ("non-positive log range", "hyperparameters.lr", {"loguniform": [0.0, 0.1]}, "must be positive"),
    ("unknown distribution", "hyperparameters.lr", {"normal": [0, 1]}, "unknown distribution 'normal'"),
    ("empty choice", "hyperparameters.batch_size", {"choice": []}, "'hyperparameters.batch_size'"),
    ("float range on an integer", "hyperparameters.batch_size", {"uniform": [8, 64]}, "is an integer"),
    ("wrong value type", "per_algorithm.Fishr.lambda", "big", "'per_algorithm.Fishr.lambda'"),
    ("unknown algorithm", "algorithms", ["ERM", "Fisher"], "'algorithms[1]'"),
    ("unknown dataset", "dataset", "ColouredMNIST", "'dataset'"),
    ("hyperparameter valid for none", "hyperparameters.irm_lambda", 10, "'hyperparameters.irm_lambda'"),
    ("hyperparameter of another algorithm", "per_algorithm.Fishr.irm_lambda", 10, "'per_algorithm.Fishr.irm_lambda'"),
    ("section for an unlisted algorithm", "per_algorithm.IRM", {"irm_lambda": 10}, "'per_algorithm.IRM'"),
    ("test environment out of range", "test_envs", [3], "'test_envs[0]'"),
    ("every environment tested", "test_envs", [[0, 1, 2]], "none is left to train on"),
    ("bad test_envs word", "test_envs", "each", "'test_envs'"),
    ("missing required key", "name", DELETE, "missing required key 'name'"),
    ("non-positive samples", "search.num_samples", 0, "'search.num_samples'"),
    ("unknown search algorithm", "search.algorithm", "grid", "'search.algorithm'"),
    ("unknown scheduler", "scheduler.type", "hyperband", "'scheduler.type'"),
    ("grace period past the end", "scheduler.grace_period", 600, "'scheduler.grace_period'"),
    ("reduction factor <= 1", "scheduler.reduction_factor", 1, "'scheduler.reduction_factor'"),
    ("no bracket", "scheduler.brackets", 0, "'scheduler.brackets'"),
    ("a bracket past the end", "scheduler.brackets", 3, "'scheduler.brackets': bracket 2 would first stop trials at step 1800"),
    ("stop_last_trials not a bool", "scheduler.stop_last_trials", "sometimes", "'scheduler.stop_last_trials'"),
    ("negative GPU", "resources.gpu", -1, "'resources.gpu'"),
    ("checkpoint after the end", "checkpoint_freq", 601, "'checkpoint_freq'"),
    ("tracking_uri not a string", "tracking_uri", 5, "'tracking_uri'"),
    ("negative max_failures", "max_failures", -1, "'max_failures'"),
]


@pytest.mark.parametrize(("what", "path", "value", "expected"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_kind_of_mistake_is_one_line_naming_file_and_key(tmp_path: Path, what: str, path: str, value: Any, expected: str) -> None:
    file = write(tmp_path, with_change(path, value))
    with pytest.raises(ConfigError) as caught:
        load_spec(file)
    message = str(caught.value)
    assert message.startswith(str(file)), message
    assert expected in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("name: [unclosed\n", "not valid YAML at line"),
        ("- a\n- b\n", "expected a mapping of settings at the top level, got list"),
        ("", "the file is empty"),
        ("just a string\n", "got str"),
    ],
    ids=["syntax error", "list at top level", "empty file", "scalar at top level"],
)
def test_malformed_documents(tmp_path: Path, content: str, expected: str) -> None:
    file = write(tmp_path, content)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_spec(file)
    assert str(file) in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_spec(tmp_path / "nope.yaml")


def test_flags_override_the_file_and_are_validated_again(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, VALID))
    changed = spec.with_overrides(num_samples=2, steps=900, name="other", storage_path="/tmp/y", tracking_uri="file:x")
    assert (changed.settings.search.num_samples, changed.settings.steps, changed.name) == (2, 900, "other")
    assert changed.settings.tracking_uri == "file:x" and changed.settings.storage_path == "/tmp/y"
    assert changed.spaces == spec.spaces
    with pytest.raises(ConfigError, match="^--num-samples: "):
        spec.with_overrides(num_samples=0)
    with pytest.raises(ConfigError, match="'scheduler.grace_period': must be below steps"):
        spec.with_overrides(steps=150)


def test_cli_reports_bad_file_with_exit_code_2_and_no_traceback(tmp_path: Path) -> None:
    file = write(tmp_path, with_change("hyperparameters.lr", {"loguniform": [-1.0, 0.1]}))
    result = subprocess.run(
        [sys.executable, "-m", "fishr_tune.cli", "sweep", str(file)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(file) in lines[0] and "'hyperparameters.lr'" in lines[0], result.stderr


# ---- property: no malformed file ends in anything but a ConfigError naming it (or a valid spec) ----

yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["all", "pairs", "tpe", "asha", "ERM", "Fishr", "lr", "loguniform", "choice"]),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=4)),
    max_leaves=10,
)
KEY_PATHS = [
    "name", "dataset", "algorithms", "test_envs", "trial_seeds", "steps", "checkpoint_freq", "hyperparameters",
    "hyperparameters.lr", "hyperparameters.batch_size", "per_algorithm", "per_algorithm.Fishr", "per_algorithm.Fishr.ema",
    "search", "search.num_samples", "scheduler", "scheduler.grace_period", "resources", "resources.gpu", "tracking_uri",
    "max_failures", "holdout_fraction", "label_noise",
]


@st.composite
def malformed_documents(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["mutate", "text", "value"]))
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "value":
        return yaml.safe_dump(draw(yaml_values))
    values = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(KEY_PATHS))
        node: Any = values
        *parents, last = path.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if draw(st.booleans()) and last in node:
            del node[last]
        else:
            node[last] = draw(yaml_values)
    text = yaml.safe_dump(values)
    if draw(st.booleans()):  # and sometimes cut the text anywhere
        text = text[: draw(st.integers(0, len(text)))]
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=malformed_documents())
def test_random_malformed_files_never_end_in_a_traceback(document: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        file = Path(directory) / "fuzzed.yaml"
        file.write_text(document, encoding="utf-8")
        try:
            spec = load_spec(file)
        except ConfigError as error:
            assert str(file) in str(error) or str(error).startswith("--")
            assert "\n" not in str(error)
        else:
            assert isinstance(spec, SweepSpec) and spec.groups


def test_build_spec_rejects_non_string_keys() -> None:
    with pytest.raises(ConfigError, match="x.yaml: top-level keys must be names"):
        build_spec({1: "a", **VALID}, "x.yaml")
