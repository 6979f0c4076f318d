"""The checkpoint record: the one unit of data from training through Tune and MLflow to analyze.

Field names are DomainBed's results.jsonl names, so existing DomainBed sweeps read as they are.
Every other module imports the names and helpers from here instead of spelling them again.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fishr_tune.files import write_text_atomically

if TYPE_CHECKING:
    import pandas

STEP = "step"
EPOCH = "epoch"
LOSS = "loss"
NLL = "nll"
PENALTY = "penalty"
STEP_TIME = "step_time"
HPARAMS = "hparams"
ARGS = "args"
VAL_ACC = "val_acc"
# A sweep trial's last record, when the sweep asks for it: fishr_tune.inconsistency's score and its diagonal version.
INCONSISTENCY = "inconsistency"
INCONSISTENCY_DIAGONAL = "inconsistency_diagonal"
# Training-domain validation loss (mean over the training envs' out splits): a sweep reports it beside val_acc; the
# early-stopping scheduler breaks val_acc's ties with it (sweep/search.py), selection never reads it.
VAL_NLL = "val_nll"
# MLflow tag on a sweep's parent run: {algorithm: {hparam: distribution kind}}, so plots draw each axis as searched.
SPACE_TAG = "fishr_tune.space"
# MLflow tags a sweep writes and analyze reads: the run's kind (KIND_SWEEP parent or KIND_TRIAL) and a trial's args.
KIND_TAG = "fishr_tune.kind"
KIND_SWEEP = "sweep"
KIND_TRIAL = "trial"
ARGS_TAG = "fishr_tune.args"
# A trial run's metrics beside its records: the best training-domain validation accuracy so far and its step (ties:
# the earliest), so sorting the run list by best_val_acc ranks trials as analyze's training_domain selection does.
# The parent run holds BEST_VAL_ACC + "_" + each group's flat name, and a SELECTED_RUN_TAG + flat name tag per group
# naming the run id that training_domain selects.
BEST_VAL_ACC = "best_val_acc"
BEST_VAL_STEP = "best_val_step"
SELECTED_RUN_TAG = "selected_run."
# A digest of a trial's config (group, sample index, seed, hyperparameters), tagged on its run.
CONFIG_TAG = "fishr_tune.config"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3 refuses the old ./mlruns file store
VIEW_NAME = "Trials by best validation"  # the saved MLflow view of a sweep's trials ranked by best_val_acc
SPLITS = ("in", "out")

RESULTS_FILE = "results.jsonl"


def acc_key(env: int, split: str) -> str:
    """`env{i}_{split}_acc`, DomainBed's name for the accuracy of one split of one environment."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return f"env{env}_{split}_acc"


def env_indices(record: Mapping[str, Any]) -> list[int]:
    """The environment indices that a record holds accuracies for, sorted."""
    found = set()
    for key in record:
        if key.startswith("env") and key.endswith("_acc"):
            head = key[3:].split("_", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def train_envs(record: Mapping[str, Any]) -> list[int]:
    test = set(record[ARGS]["test_envs"])
    return [i for i in env_indices(record) if i not in test]


def validation_accuracy(record: Mapping[str, Any]) -> float:
    """Training-domain validation accuracy: mean out-split accuracy over the training environments.

    This is what drives search, early stopping and training-domain model selection; test environments never enter.
    """
    envs = train_envs(record)
    if not envs:
        raise ValueError("record has no training environment")
    return sum(record[acc_key(i, "out")] for i in envs) / len(envs)


def make_record(
    *,
    step: int,
    epoch: float,
    losses: Mapping[str, float],
    step_time: float,
    accuracies: Mapping[int, Mapping[str, float]],
    hparams: Mapping[str, Any],
    args: Mapping[str, Any],
) -> dict[str, Any]:
    """Build one record; `accuracies[env][split]` becomes `env{env}_{split}_acc`."""
    record: dict[str, Any] = {STEP: int(step), EPOCH: float(epoch)}
    for name in (LOSS, NLL, PENALTY):
        if name in losses:
            record[name] = float(losses[name])
    for name, value in losses.items():
        record.setdefault(name, float(value))
    record[STEP_TIME] = float(step_time)
    for env in sorted(accuracies):
        for split in SPLITS:
            record[acc_key(env, split)] = float(accuracies[env][split])
    record[HPARAMS] = dict(hparams)
    record[ARGS] = dict(args)
    return record


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} into a record")


def dumps(record: Mapping[str, Any]) -> str:
    """One JSON line; NaN and infinities are written as null so any JSON reader accepts the file."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return json.dumps(clean, sort_keys=True, default=_json_default)


def append(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append one record and flush it to disk, so a crash loses at most the record being written."""
    append_line(path, dumps(record))


# --- JSON Lines that survive torn writes -------------------------------------------------------------------------
# One reader and one appender for every JSON-lines file the project reads or writes: results.jsonl, Ray Tune's
# result.json, the MLflow journal. A writer that dies mid-line leaves a torn last line; the next append would glue
# its line onto it, and a reader that stops at the first bad line would then hide everything written afterwards.

log = logging.getLogger(__name__)
TORN_SUFFIX = ".torn"
_SALVAGE_ATTEMPTS = 1000


def _object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _salvage(text: str) -> dict[str, Any] | None:
    """The complete object that follows a torn one on the same line (what an appender that did not repair leaves)."""
    decoder = json.JSONDecoder()
    start = text.find("{", 1)
    for _ in range(_SALVAGE_ATTEMPTS):
        if start < 0:
            return None
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            value, end = None, -1
        if isinstance(value, dict) and text[end:].strip() == "":
            return value
        start = text.find("{", start + 1)
    return None


def _describe(line: bytes) -> str:
    return f"{len(line)} bytes" if len(line) > 60 else repr(line.decode("utf-8", errors="replace"))


def read_lines(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every JSON object of a JSON-lines file, in order.

    A line that is not a JSON object (torn, garbled, not UTF-8) is skipped with a warning naming the file and the
    line; the lines after it are read as usual. A line that holds a torn object followed by a complete one keeps
    the complete one.
    """
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    found: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            log.warning("%s:%d: skipped a line that is not UTF-8 (%d bytes)", path, number, len(raw))
            continue
        value = _object(text)
        if value is not None:
            found.append(value)
            continue
        salvaged = _salvage(text)
        last = number == len(lines) and not data.endswith(b"\n")
        what = "a torn last line" if last else "a line that is not a JSON object"
        if salvaged is not None:
            log.warning("%s:%d: %s; kept the complete record that follows it on the same line", path, number, what)
            found.append(salvaged)
        else:
            log.warning("%s:%d: skipped %s (%s)", path, number, what, _describe(raw))
    return found


def repair_tail(path: str | os.PathLike[str]) -> None:
    """Make the file end with a complete line before anything is appended to it.

    A last line without its newline is completed if it is a whole JSON object, else moved to `<file>.torn` (kept,
    not deleted) and cut off, with a warning naming the file and the line.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "rb+") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        data = handle.read()
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        number = data.count(b"\n") + 1
        try:
            complete = _object(tail.decode("utf-8")) is not None
        except UnicodeDecodeError:
            complete = False
        if complete:
            handle.seek(size)
            handle.write(b"\n")
        else:
            with open(path.with_name(path.name + TORN_SUFFIX), "ab") as aside:
                aside.write(tail + b"\n")
                aside.flush()
                os.fsync(aside.fileno())
            handle.truncate(cut)
            log.warning("%s:%d: a torn last line (%s) was moved to %s before appending", path, number,
                        _describe(tail), path.name + TORN_SUFFIX)
        handle.flush()
        os.fsync(handle.fileno())


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one line (repairing a torn tail first) and fsync it: a crash loses at most the line being written."""
    if "\n" in line:
        raise ValueError("a JSON line must not contain a newline")
    repair_tail(path)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a results.jsonl (see read_lines: bad lines are skipped with a warning, never hide later ones)."""
    return read_lines(path)


def rewrite(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> None:
    """Replace a results file atomically (used when resuming drops records past the checkpoint)."""
    text = "".join(dumps(record) + "\n" for record in records)
    write_text_atomically(path, text)


def iter_files(root: str | os.PathLike[str]) -> Iterator[Path]:
    """Every results.jsonl below root (DomainBed sweep output dirs have one per run)."""
    yield from sorted(Path(root).rglob(RESULTS_FILE))


# A flat row's columns for a record's hparams and args (tables, Tune results, MLflow reads): `hparams.<name>`.
HPARAM_PREFIX = f"{HPARAMS}."
ARG_PREFIX = f"{ARGS}."


def hparam_column(name: str) -> str:
    return HPARAM_PREFIX + name


def arg_column(name: str) -> str:
    return ARG_PREFIX + name


def flatten(record: Mapping[str, Any]) -> dict[str, Any]:
    """One flat row: hparams and args become `hparams.<name>` / `args.<name>` columns (for tables)."""
    row: dict[str, Any] = {}
    for key, value in record.items():
        if key in (HPARAMS, ARGS) and isinstance(value, Mapping):
            for sub, sub_value in value.items():
                row[f"{key}.{sub}"] = list(sub_value) if isinstance(sub_value, tuple) else sub_value
        else:
            row[key] = value
    return row


def to_table(records: Sequence[Mapping[str, Any]]) -> pandas.DataFrame:
    import pandas

    return pandas.DataFrame([flatten(r) for r in records])
