"""Property: a hostile settings file is refused the same way every time (issue #14).

The shipped search spaces (search_spaces/*.yaml) and the train configs that `fishr-tune train` writes (its
config.yaml, which `--config` reruns) are mutated one way per example: a value of the wrong type, an unknown or a
missing key at any level, a number outside its range (the registry's domain for hyperparameters), NaN or infinity,
a huge number or string, a duplicated key, an anchor or alias, bytes that are not UTF-8 or not printable. Each
mutated file must give exit code 2 and exactly one stderr line that names the file and the key (a YAML-level
fault: the key or the byte), with no traceback, and nothing expensive may start: data loading, Ray and training
are replaced by stand-ins that fail the example if reached.

In-process runs go through click's `main`, the function the console script calls (the same validation code);
a few subprocess runs of `python -m fishr_tune.cli` under an isolated HOME, TMPDIR and Ray temp dir check the
real entry point and that no Ray session directory appears. Examples are derandomized (the same on any machine)
and have no deadline: the suite asserts behaviour, not timing, and a refusal's work is bounded by construction
(settings files are at most 1 MiB, aliases are refused before they expand).
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import re
import string
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fishr_tune.cli import main
from fishr_tune.hparams import hparam_space
from fishr_tune.yaml_io import load_yaml

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))
EXAMPLES = 60  # per test function; 7 functions: ~420 generated files, a few seconds in all

HOSTILE = settings(
    max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


class ExpensiveWorkStarted(AssertionError):
    """A stand-in for data loading, Ray or training was reached: the mutated file passed validation."""


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise ExpensiveWorkStarted("validation passed: data, Ray or training would start now")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the mutated files go; while the module runs, nothing past validation can start."""
    from fishr_tune import training
    from fishr_tune.sweep import runner

    root = tmp_path_factory.mktemp("hostile")
    with mock.patch.object(runner, "build_datasets", _refuse), mock.patch.object(runner, "ensure_ray", _refuse), \
            mock.patch.object(training, "run_training", _refuse):
        yield root


# ---- the documents that are mutated -------------------------------------------------------------------------------

def sweep_base(path: Path, scratch: Path) -> dict[str, Any]:
    """A shipped search space, made to pass here: one CPU and no GPU per trial, storage under `scratch`."""
    values = load_yaml(path)
    values["resources"] = {"cpu": 1, "gpu": 0}
    if isinstance(values.get("scheduler"), dict) and values["scheduler"].get("type", "asha") == "asha":
        values["scheduler"].setdefault("brackets", 1)  # the default, written out so that it is mutated too
    values["storage_path"] = str(scratch / "sweeps")
    values["tracking_uri"] = f"sqlite:///{scratch / 'mlflow.db'}"
    return values


TRAIN_RUNS = [  # the config.yaml `fishr-tune train` writes for these (every hyperparameter written out)
    {"dataset": "ColoredMNIST-IRM", "algorithm": "Fishr", "steps": 500, "checkpoint_freq": 50, "label_noise": 0.25},
    {"dataset": "PACS", "algorithm": "IDGM", "test_envs": [0], "steps": 5000, "checkpoint_freq": 300, "num_workers": 2,
     "data_dir": "/data", "hparams": {"resnet_weights": "none"}},
    {"dataset": "RotatedMNIST", "algorithm": "Fish", "hparams_seed": 3, "trial_seed": 1, "seed": 2, "device": "cpu"},
    {"dataset": "VLCS", "algorithm": "DANN", "test_envs": [1], "hparams": {"amp": "bf16", "class_balanced": True}},
]


def train_base(values: dict[str, Any], scratch: Path) -> dict[str, Any]:
    from fishr_tune.training import make_config, saved_settings

    return saved_settings(make_config({**values, "output_dir": str(scratch / "run")}, "base"))


def bases(scratch: Path) -> list[tuple[str, dict[str, Any]]]:
    found = [("sweep", sweep_base(p, scratch)) for p in SHIPPED_SPACES]
    return found + [("train", train_base(v, scratch)) for v in TRAIN_RUNS]


_BASES: dict[Path, list[tuple[str, dict[str, Any]]]] = {}


def cached_bases(scratch: Path) -> list[tuple[str, dict[str, Any]]]:
    if scratch not in _BASES:
        _BASES[scratch] = bases(scratch)
    return _BASES[scratch]


# ---- running one file and checking the refusal --------------------------------------------------------------------

_names = itertools.count()


def write(scratch: Path, content: str | bytes) -> Path:
    path = scratch / f"mutated_{next(_names)}.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def argv(kind: str, path: Path) -> list[str]:
    return ["sweep", str(path)] if kind == "sweep" else ["train", "--config", str(path)]


def refusal_line(kind: str, path: Path) -> str:
    """Run the CLI in-process on `path`: exit 2, one `Error:` line naming the file, no traceback, no Ray."""
    result = CliRunner().invoke(main, argv(kind, path), catch_exceptions=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output[-1500:])
    assert "Traceback" not in result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    assert str(path) in lines[0], lines[0]
    assert len(lines[0]) <= 1200, len(lines[0])  # a bad value is quoted, never echoed whole
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()
    return lines[0]


def dump(values: Any) -> str:
    return yaml.safe_dump(values, sort_keys=False, default_flow_style=False, width=10**6)


# ---- where a mutation lands, and which key the message must name --------------------------------------------------

Path_ = tuple[Any, ...]


def nodes(value: Any, path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """Every key and list item below the top level, with its path."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield (*path, key), child
        yield from nodes(child, (*path, key))


def replaced(values: dict[str, Any], path: Path_, new: Any) -> dict[str, Any]:
    changed = copy.deepcopy(values)
    node = changed
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = new
    return changed


def named_key(kind: str, path: Path_) -> list[str]:
    """The texts that name `path` in a refusal: the dotted key (without list indices) as the messages write it,
    cut at the hyperparameter (its distribution's parts are named by the distribution's own message)."""
    keys = [str(p) for p in path if not isinstance(p, int)]
    if kind == "train":
        return ["'hparams'", f"'{keys[1]}'"] if keys[0] == "hparams" and len(keys) > 1 else [".".join(keys)]
    cut = {"hyperparameters": 2, "per_algorithm": 3}.get(keys[0], len(keys))
    return [".".join(keys[:cut])]


def assert_names(line: str, kind: str, path: Path_) -> None:
    for text in named_key(kind, path):
        assert text in line, (text, line)


# ---- the mutations ------------------------------------------------------------------------------------------------

def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


WORDS = st.text(alphabet=string.ascii_letters, min_size=1, max_size=8).map(lambda s: "x" + s)  # never a number


def wrong_type(value: Any) -> st.SearchStrategy[Any]:
    """A value of a type no key accepts where `value` stood."""
    if isinstance(value, bool):
        return st.sampled_from(["sometimes", 2, [True]])
    if is_number(value):
        return WORDS
    if isinstance(value, str):
        return st.sampled_from([7, 0.5, [1], {"x": 1}])
    if isinstance(value, list):
        return st.just({"x": [1]})
    return st.just([1, "x"]) if isinstance(value, dict) else st.just({"x": [1]})


@st.composite
def document(draw: st.DrawFn, scratch: Path) -> tuple[str, dict[str, Any]]:
    kind, values = draw(st.sampled_from(cached_bases(scratch)))
    return kind, copy.deepcopy(values)


def hparam_owner(kind: str, values: dict[str, Any], path: Path_) -> tuple[str, str, str] | None:
    """(algorithm, dataset, name) when `path` is a hyperparameter's value or part of its distribution."""
    keys = [p for p in path if not isinstance(p, int)]
    if kind == "train" and keys[0] == "hparams" and len(keys) >= 2:
        return values["algorithm"], values["dataset"], keys[1]
    if kind == "sweep" and keys[0] == "hyperparameters" and len(keys) >= 2:
        return values["algorithms"][0], values["dataset"], keys[1]
    if kind == "sweep" and keys[0] == "per_algorithm" and len(keys) >= 3:
        return keys[1], values["dataset"], keys[2]
    return None


# Out-of-range values of the settings themselves (hyperparameters use the registry's domains).
SWEEP_RANGES: dict[str, list[Any]] = {
    "steps": [0, -5, 10**9 + 1, 10**30], "checkpoint_freq": [0, -1, 10**12], "holdout_fraction": [0, 1, -0.5, 1.5, 1e300],
    "label_noise": [-0.01, 1.01, 1e300], "search.num_samples": [0, -1], "search.seed": [-1, 2**18, 429_197, 10**20],
    "scheduler.grace_period": [0, -1, 10**12], "scheduler.reduction_factor": [1, 0.5, 0, -2],
    "scheduler.brackets": [0, -1, 10**6, 10**30], "resources.cpu": [0, -1, 10**6], "resources.gpu": [-1, 1.5, 10**6],
    "max_failures": [-1], "trial_seeds": [-1, 2**32, 10**30], "test_envs": [-1, 99],
}
TRAIN_RANGES: dict[str, list[Any]] = {
    "steps": [0, -1, 10**10], "checkpoint_freq": [0, -3, 10**12], "hparams_seed": [-1, 2**32, 10**30],
    "trial_seed": [-1, 2**32], "seed": [-1, 2**40], "holdout_fraction": [0, 1, 2.5, -1e300], "label_noise": [-0.5, 1.5],
    "num_workers": [-1, -100], "test_envs": [-1, 99],
}


def outside(domain: Any, integer: bool) -> list[Any]:
    """Values just and far outside a numeric domain (an open bound itself is outside)."""
    found: list[Any] = []
    if domain.low > -math.inf:
        found += [domain.low - 1, -1e300] + ([domain.low] if domain.low_open else [])
        if not integer:
            found.append(domain.low - 1e-6)
    if domain.high < math.inf:
        found += [domain.high + 1, 10**30 if integer else 1e300] + ([domain.high] if domain.high_open else [])
    return [int(v) if integer and math.isfinite(v) else v for v in found if not integer or math.isfinite(v)]


def out_of_range_choices(kind: str, values: dict[str, Any]) -> list[tuple[Path_, Any]]:
    """(path, value) pairs that are each outside what the key accepts."""
    choices: list[tuple[Path_, Any]] = []
    ranges = SWEEP_RANGES if kind == "sweep" else TRAIN_RANGES
    for path, value in nodes(values):
        if not is_number(value):
            continue
        dotted = ".".join(str(p) for p in path if not isinstance(p, int))
        owner = hparam_owner(kind, values, path)
        if owner is not None:
            algorithm, dataset, name = owner
            spec = hparam_space(algorithm, dataset)[name]
            if spec.domain is None or spec.domain.values:
                continue
            integer = isinstance(spec.default, int)
            choices += [(path, v) for v in outside(spec.domain, integer)]
        elif dotted in ranges:
            choices += [(path, v) for v in ranges[dotted]]
    return choices


MAPPING_LINE = re.compile(r"^( *)([A-Za-z_][A-Za-z0-9_.-]*):(?: (.*))?$")


def mapping_lines(text: str) -> list[tuple[int, str, str, str]]:
    """(line index, indent, key, value) of every `key: value` line of a block-style dump."""
    found = []
    for i, line in enumerate(text.splitlines()):
        match = MAPPING_LINE.match(line)
        if match:
            found.append((i, match.group(1), match.group(2), match.group(3) or ""))
    return found


# ---- the properties -----------------------------------------------------------------------------------------------

def test_every_base_document_passes_validation_unmutated(scratch: Path) -> None:
    """Otherwise a refusal would say nothing about the mutation."""
    for kind, values in cached_bases(scratch):
        result = CliRunner().invoke(main, argv(kind, write(scratch, dump(values))))
        assert isinstance(result.exception, ExpensiveWorkStarted), (kind, values.get("name"), result.output)
    assert len(cached_bases(scratch)) == len(SHIPPED_SPACES) + len(TRAIN_RUNS) and len(SHIPPED_SPACES) >= 10


@HOSTILE
@given(data=st.data())
def test_a_value_of_the_wrong_type_is_refused_naming_its_key(scratch: Path, data: st.DataObject) -> None:
    kind, values = data.draw(document(scratch))
    path, value = data.draw(st.sampled_from(list(nodes(values))))
    new = data.draw(wrong_type(value))
    line = refusal_line(kind, write(scratch, dump(replaced(values, path, new))))
    assert_names(line, kind, path)


@HOSTILE
@given(data=st.data())
def test_an_unknown_or_missing_key_at_any_level_is_refused_naming_it(scratch: Path, data: st.DataObject) -> None:
    kind, values = data.draw(document(scratch))
    mappings = [((), values)] + [(p, v) for p, v in nodes(values) if isinstance(v, dict)]
    required = ["name", "dataset", "algorithms"] if kind == "sweep" else []
    if required and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(required))
        del values[key]
        assert f"missing required key '{key}'" in refusal_line(kind, write(scratch, dump(values)))
        return
    path, mapping = data.draw(st.sampled_from(mappings))
    key = "zz_" + data.draw(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=6))
    mapping[key] = data.draw(st.sampled_from([1, "x", [1], {"a": 1}]))
    line = refusal_line(kind, write(scratch, dump(values)))
    assert_names(line, kind, (*path, key))


@HOSTILE
@given(data=st.data())
def test_a_number_outside_its_range_or_domain_is_refused_naming_its_key(scratch: Path, data: st.DataObject) -> None:
    kind, values = data.draw(document(scratch))
    path, new = data.draw(st.sampled_from(out_of_range_choices(kind, values)))
    line = refusal_line(kind, write(scratch, dump(replaced(values, path, new))))
    assert_names(line, kind, path)


@HOSTILE
@given(data=st.data())
def test_nan_and_infinities_are_refused_naming_their_key(scratch: Path, data: st.DataObject) -> None:
    kind, values = data.draw(document(scratch))
    numbers = [path for path, value in nodes(values) if is_number(value)]
    path = data.draw(st.sampled_from(numbers))
    new = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    line = refusal_line(kind, write(scratch, dump(replaced(values, path, new))))
    assert_names(line, kind, path)


@HOSTILE
@given(data=st.data())
def test_a_huge_string_is_refused_and_quoted_not_echoed(scratch: Path, data: st.DataObject) -> None:
    kind, values = data.draw(document(scratch))
    accepted_anywhere = {("description",)}  # free text
    strings = [p for p, v in nodes(values) if isinstance(v, str) and p not in accepted_anywhere]
    path = data.draw(st.sampled_from(strings))
    size = data.draw(st.sampled_from([2_000, 20_000, 2_000_000]))  # PyYAML reads ~1 MB/s: large files are few
    # put in after dumping: PyYAML's emitter takes seconds over a 2 MB scalar, its reader far less
    text = dump(replaced(values, path, "HUGEVALUE")).replace("HUGEVALUE", "Z" * size)
    line = refusal_line(kind, write(scratch, text))
    assert "Z" * 1000 not in line
    if size < 1 << 20:  # larger files are refused whole, by size, before any key is read
        assert_names(line, kind, path)


@HOSTILE
@given(data=st.data())
def test_a_duplicated_key_at_any_level_is_refused_naming_it(scratch: Path, data: st.DataObject) -> None:
    kind, values = data.draw(document(scratch))
    lines = dump(values).splitlines()
    index, indent, key, _ = data.draw(st.sampled_from(mapping_lines("\n".join(lines))))
    lines.insert(index, f"{indent}{key}: {data.draw(st.sampled_from(['1', 'x', '.nan', '[1, 2]']))}")
    line = refusal_line(kind, write(scratch, "\n".join(lines) + "\n"))
    assert f"duplicate key '{key}'" in line and f"first at line {index + 1}" in line, line


@HOSTILE
@given(data=st.data())
def test_anchors_and_aliases_are_refused_naming_the_key(scratch: Path, data: st.DataObject) -> None:
    kind, values = data.draw(document(scratch))
    lines = dump(values).splitlines()
    scalars = [m for m in mapping_lines("\n".join(lines)) if m[3]]
    anchored = data.draw(st.sampled_from(scalars))
    marked = [anchored]
    lines[anchored[0]] = f"{anchored[1]}{anchored[2]}: &a {anchored[3]}"
    if data.draw(st.booleans()):  # and use it somewhere else
        aliased = data.draw(st.sampled_from([m for m in scalars if m[0] != anchored[0]]))
        lines[aliased[0]] = f"{aliased[1]}{aliased[2]}: *a"
        marked.append(aliased)
    first = min(marked)
    line = refusal_line(kind, write(scratch, "\n".join(lines) + "\n"))
    assert "anchors and aliases" in line and f"under key '{first[2]}'" in line and f"line {first[0] + 1}," in line, line


@HOSTILE
@given(data=st.data())
def test_bytes_that_are_not_utf8_or_not_printable_are_refused_naming_where(scratch: Path, data: st.DataObject) -> None:
    kind, values = data.draw(document(scratch))
    text = dump(values).encode("utf-8")
    offset = data.draw(st.integers(0, len(text)))
    bad = data.draw(st.sampled_from([b"\xff", b"\xfe\xff", b"\xc3", b"\x80", b"\xed\xa0\x80", b"\x00", b"\x07", b"\x1b", b"\x7f"]))
    line = refusal_line(kind, write(scratch, text[:offset] + bad + text[offset:]))
    if bad[0] >= 0x80:
        assert f"not a UTF-8 text file (byte {offset})" in line, line
    else:
        assert "not valid YAML" in line and "unacceptable character" in line, line


# ---- the real entry point: a handful of files through `python -m fishr_tune.cli` ----------------------------------

def entry_point_cases(scratch: Path) -> list[tuple[str, str | bytes, list[str]]]:
    sweep = next(v for k, v in cached_bases(scratch) if k == "sweep")
    train = next(v for k, v in cached_bases(scratch) if k == "train")
    return [
        ("sweep", dump(sweep) + "steps: 4000000\n", ["duplicate key 'steps'"]),
        ("sweep", dump(replaced(sweep, ("scheduler", "reduction_factor"), math.inf)), ["'scheduler.reduction_factor'"]),
        ("sweep", dump(replaced(sweep, ("search", "seed"), 429_197)), ["'search.seed'"]),
        ("train", dump(replaced(train, ("hparams", "lr"), 0)).encode() + b"\xff", ["not a UTF-8 text file"]),
        ("train", dump(replaced(train, ("hparams", "batch_size"), 10**12)), ["'hparams'", "'batch_size'"]),
    ]


def check_entry_point(cases: list[tuple[str, str | bytes, list[str]]], scratch: Path, tmp_path: Path) -> None:
    """Run the cases concurrently under one isolated HOME / TMPDIR / RAY_TMPDIR, then look for Ray sessions there."""
    env = {**os.environ, "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp"), "RAY_TMPDIR": str(tmp_path / "ray"),
           "PYTHONPATH": str(ROOT)}
    for sub in ("home", "tmp", "ray"):
        (tmp_path / sub).mkdir()
    files = [write(scratch, content) for _, content, _ in cases]
    processes = [subprocess.Popen([sys.executable, "-m", "fishr_tune.cli", *argv(kind, file)], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for (kind, _, _), file in zip(cases, files)]
    for process, file, (_, _, expected) in zip(processes, files, cases):
        stdout, stderr = process.communicate(timeout=180)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert process.returncode == 2 and "Traceback" not in stderr + stdout, stderr[-2000:]
        assert len(lines) == 1 and str(file) in lines[0] and all(e in lines[0] for e in expected), lines
    assert not list((tmp_path / "ray").iterdir()) and not list((tmp_path / "tmp").glob("**/session_*"))


def test_the_real_entry_point_refuses_in_one_line_and_starts_no_ray(scratch: Path, tmp_path: Path) -> None:
    cases = entry_point_cases(scratch)
    check_entry_point([cases[0], cases[3]], scratch, tmp_path)  # a sweep and a train file; the rest are slow


@pytest.mark.slow
def test_every_entry_point_case_refuses_in_one_line_and_starts_no_ray(scratch: Path, tmp_path: Path) -> None:
    check_entry_point(entry_point_cases(scratch), scratch, tmp_path)
