"""The checkpoint record: the one unit of data from training through Tune and MLflow to analyze.

Field names are DomainBed's results.jsonl names, so existing DomainBed sweeps read as they are.
Every other module imports the names and helpers from here instead of spelling them again.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

STEP = "step"
EPOCH = "epoch"
LOSS = "loss"
NLL = "nll"
PENALTY = "penalty"
STEP_TIME = "step_time"
HPARAMS = "hparams"
ARGS = "args"
VAL_ACC = "val_acc"
# MLflow tag on a sweep's parent run: {algorithm: {hparam: distribution kind}}, so plots draw each axis as searched.
SPACE_TAG = "fishr_tune.space"
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
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a results.jsonl; a torn last line (the writer died mid-line) is ignored, any other bad line is an error."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON record ({error})") from error
    return records


def rewrite(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> None:
    """Replace a results file atomically (used when resuming drops records past the checkpoint)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def iter_files(root: str | os.PathLike[str]) -> Iterator[Path]:
    """Every results.jsonl below root (DomainBed sweep output dirs have one per run)."""
    yield from sorted(Path(root).rglob(RESULTS_FILE))


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


def to_table(records: Sequence[Mapping[str, Any]]) -> "pandas.DataFrame":  # noqa: F821
    import pandas

    return pandas.DataFrame([flatten(r) for r in records])
