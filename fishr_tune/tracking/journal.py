"""MLflow tracking that survives outages: every operation is journaled on disk first, then sent.

One experiment per sweep, a parent run per sweep and a child run per trial. Training never waits on MLflow:
if the tracking server is unreachable, operations stay in the journal and are sent at the next flush (or by
`fishr-tune mlflow-sync`). Sending replays each operation through mlflow_store, where replaying twice is harmless.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fishr_tune import records
from fishr_tune.errors import ConfigError
from fishr_tune.files import write_text_atomically
from fishr_tune.tracking import mlflow_store

JOURNAL_FILE = "journal.jsonl"
SENT_FILE = "sent"
RUNS_FILE = "runs.json"
RETRY_SECONDS = 10.0
MAX_PARAM_LENGTH = 6000


def param_value(value: Any) -> str:
    """A param as MLflow stores it: strings as they are, anything else JSON-encoded (analyze decodes it back)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:MAX_PARAM_LENGTH]


class MlflowJournal:
    """The journal of one sweep's MLflow operations, kept in `directory` (inside the sweep's storage): a Tracker."""

    def __init__(self, directory: str | os.PathLike[str], tracking_uri: str, experiment_name: str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self._next_retry = 0.0
        self.last_error: str | None = None
        self._append_lock = threading.Lock()  # the sweep's callback journals from Tune's loop and its closing thread
        settings = self.directory / "settings.json"
        if settings.exists():
            saved = json.loads(settings.read_text(encoding="utf-8"))
            self.tracking_uri = tracking_uri or saved["tracking_uri"]
        settings.write_text(json.dumps({"tracking_uri": self.tracking_uri, "experiment": experiment_name}), encoding="utf-8")

    @classmethod
    def open_existing(cls, directory: str | os.PathLike[str], tracking_uri: str | None = None) -> MlflowJournal:
        """Reopen a sweep's journal (for `mlflow-sync`), optionally against another tracking URI."""
        settings = Path(directory) / "settings.json"
        if not settings.exists():
            raise ConfigError(f"{directory}: no MLflow journal here (expected {settings})")
        try:
            saved = json.loads(settings.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"{settings}: not a readable journal settings file ({str(error)[:200]})") from None
        for key in ("tracking_uri", "experiment"):
            if not isinstance(saved, dict) or not isinstance(saved.get(key), str) or not saved[key]:
                raise ConfigError(f"{settings}: key {key!r}: expected a non-empty string (the file is damaged)")
        return cls(directory, tracking_uri or saved["tracking_uri"], saved["experiment"])

    def __reduce__(self) -> tuple[type[MlflowJournal], tuple[str, str, str]]:
        """Pickled as where it lives (Tune pickles the callback holding it); the lock and retry timer start afresh."""
        return type(self), (str(self.directory), self.tracking_uri, self.experiment_name)

    # --- journaling (never touches the network) -------------------------------------------------------------

    def _append(self, operation: dict[str, Any]) -> None:
        with self._append_lock:
            records.append_line(self.directory / JOURNAL_FILE, json.dumps(operation, sort_keys=True))

    def start_run(
        self, key: str, name: str, parent: str | None = None, params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        self._append({"op": "start", "key": key, "name": name, "parent": parent,
                      "params": {k: param_value(v) for k, v in (params or {}).items()},
                      "tags": {k: str(v) for k, v in (tags or {}).items()}})

    def log_metrics(self, key: str, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None:
        """One batch of metric points at one step (one log_batch call when sent)."""
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._append({"op": "metrics", "key": key, "step": int(step),
                      "timestamp": int(timestamp_ms if timestamp_ms is not None else time.time() * 1000),
                      "metrics": {k: (v if math.isfinite(v) else None) for k, v in clean.items()}})

    def set_tags(self, key: str, tags: Mapping[str, Any]) -> None:
        self._append({"op": "tags", "key": key, "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, key: str, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self._append({"op": "artifact", "key": key, "path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def set_run_refs(self, key: str, refs: Mapping[str, str]) -> None:
        """Tags whose values are the MLflow run ids of other journal keys (known only once those runs exist)."""
        self._append({"op": "refs", "key": key, "refs": dict(refs)})

    def log_inputs(self, key: str, inputs: list[dict[str, Any]]) -> None:
        """Dataset inputs: each `{"dataset": <mlflow Dataset entity fields>, "context": str}` (see dataset_entity)."""
        self._append({"op": "inputs", "key": key, "inputs": inputs})

    def set_experiment_tags(self, tags: Mapping[str, Any]) -> None:
        self._append({"op": "experiment_tags", "key": None, "tags": {k: str(v) for k, v in tags.items()}})

    def end_run(self, key: str, status: str = "FINISHED") -> None:
        self._append({"op": "end", "key": key, "status": status})

    def adopt_run(self, key: str, previous: str, tags: Mapping[str, Any] | None = None) -> None:
        """`key` continues the run of `previous` (the same configuration under a new Ray trial id): one run, RUNNING."""
        self._append({"op": "adopt", "key": key, "from": previous, "tags": {k: str(v) for k, v in (tags or {}).items()}})

    # --- sending ------------------------------------------------------------------------------------------------

    def operations(self) -> list[dict[str, Any]]:
        path = self.directory / JOURNAL_FILE
        if not path.exists():
            return []
        # A torn or garbled line is skipped with a warning and never hides the operations after it. The sent count
        # indexes this list, so an append repairs a torn tail (set aside, never parsed) without shifting any index.
        return [op for op in records.read_lines(path) if isinstance(op.get("op"), str) and "key" in op]

    def sent_count(self) -> int:
        path = self.directory / SENT_FILE
        return int(path.read_text(encoding="utf-8") or 0) if path.exists() else 0

    def pending(self) -> int:
        return len(self.operations()) - self.sent_count()

    def _mark_sent(self, count: int) -> None:
        write_text_atomically(self.directory / SENT_FILE, str(count))

    def _runs(self) -> dict[str, str]:
        path = self.directory / RUNS_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def _save_runs(self, runs: Mapping[str, str]) -> None:
        write_text_atomically(self.directory / RUNS_FILE, json.dumps(dict(runs), sort_keys=True))

    def run_id(self, key: str) -> str | None:
        return self._runs().get(key)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.directory / "lock", "w", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def flush(self, force: bool = False) -> int:
        """Send what is pending, in order; returns how many operations are still pending.

        After a failure, later calls wait RETRY_SECONDS before trying again (unless `force`), so an outage
        costs the sweep one quick failed request now and then, not a stall at every checkpoint.
        """
        if not force and time.monotonic() < self._next_retry:
            return self.pending()
        mlflow_store.quick_failures()
        with self._locked():
            ops = self.operations()
            done = self.sent_count()
            if done >= len(ops):
                return 0
            try:
                client = mlflow_store.connect(self.tracking_uri)
                experiment_id = mlflow_store.experiment_id(client, self.experiment_name)
                runs = self._runs()
                for index in range(done, len(ops)):
                    mlflow_store.send(client, experiment_id, runs, ops[index], self._save_runs)
                    self._mark_sent(index + 1)
            except Exception as error:  # noqa: BLE001  (any client/transport error means "try later")
                self.last_error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                self._next_retry = time.monotonic() + RETRY_SECONDS
                return len(ops) - self.sent_count()
            self.last_error = None
            return 0
