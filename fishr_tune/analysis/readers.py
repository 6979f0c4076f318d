"""Records from files: a directory of results.jsonl files (a DomainBed sweep output directory, or `fishr-tune
train` output dirs), a Ray Tune results directory, or a parquet export; each read into the long table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fishr_tune import records
from fishr_tune.analysis.table import RUN
from fishr_tune.errors import ConfigError

RAY_RESULT_FILE = "result.json"
# The keys of a Ray result that are the record's (flattened): Tune adds its own (time, iteration, trial id, ...).
_RECORD_NAMES = (records.STEP, records.EPOCH, records.VAL_ACC)
_RECORD_PREFIXES = ("env", f"{records.HPARAMS}.", f"{records.ARGS}.", records.LOSS, records.NLL, records.PENALTY,
                    records.STEP_TIME)


def from_results_dirs(root: Path) -> pd.DataFrame:
    """Every results.jsonl below root; the run is its directory relative to root."""
    rows = []
    for path in records.iter_files(root):
        run = str(path.parent.relative_to(root)) or "."
        for record in records.read(path):
            rows.append({**records.flatten(record), RUN: run})
    return pd.DataFrame(rows)


def from_ray_results(root: Path) -> pd.DataFrame:
    """Ray Tune trial directories (result.json per trial): the reported metrics are flattened records.

    Tune logs a result before it registers the checkpoint that came with it, so a sweep stopped in between
    (Ctrl-C, a lost driver) resumes that trial from the checkpoint before and logs its last records again;
    resume is exact, so the replayed record equals the first and is kept once.
    """
    rows = []
    for path in sorted(root.rglob(RAY_RESULT_FILE)):
        for result in records.read_lines(path):  # torn or garbled lines skipped with a warning, not fatal
            if records.STEP not in result or not any(str(k).startswith("env") for k in result):
                continue  # a failure report or a result that is not a record
            row = {k: v for k, v in result.items() if k in _RECORD_NAMES or k.startswith(_RECORD_PREFIXES)}
            row[RUN] = str(result.get("trial_id") or path.parent.name)
            rows.append(row)
    table = pd.DataFrame(rows)
    return table.drop_duplicates([RUN, records.STEP], keep="last", ignore_index=True) if rows else table


def from_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError; a garbage file lands here
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ConfigError(f"--records: {path} is not a readable parquet file ({reason})") from None


def gather_files(path: str | Path) -> pd.DataFrame:
    """Detect the kind of source at `path` and read it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--records: {path} does not exist")
    if path.is_file():
        if path.suffix == ".parquet":
            return from_parquet(path)
        if path.name == records.RESULTS_FILE:
            return from_results_dirs(path.parent)
        raise ConfigError(f"--records: {path} is neither a parquet export nor a results.jsonl")
    if any(path.rglob(records.RESULTS_FILE)):
        return from_results_dirs(path)
    if any(path.rglob(RAY_RESULT_FILE)):
        return from_ray_results(path)
    raise ConfigError(f"--records: no results.jsonl (DomainBed / fishr-tune train) or result.json (Ray Tune) under {path}")
