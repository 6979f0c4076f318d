"""The tracker interface: what a sweep asks of its tracking store, so the sweep's callback never names MLflow's client.

Runs are addressed by the caller's own keys (a Ray trial id, "sweep"), never by the store's ids: a tracker may
create the store's run much later (after an outage), and a resumed driver must find its runs again by the same
keys. Every call only records the operation; `flush` sends what is pending. MlflowJournal is the one implementation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    """Picklable (Tune pickles the callbacks holding one); `directory` also holds the files it logs as artifacts."""

    directory: Path
    tracking_uri: str
    last_error: str | None  # why the last flush left operations pending (None once everything was sent)

    def start_run(
        self, key: str, name: str, parent: str | None = None, params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None: ...

    def adopt_run(self, key: str, previous: str, tags: Mapping[str, Any] | None = None) -> None:
        """`key` continues the run of `previous` (the same configuration under a new key)."""

    def end_run(self, key: str, status: str = "FINISHED") -> None: ...

    def log_metrics(self, key: str, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None: ...

    def set_tags(self, key: str, tags: Mapping[str, Any]) -> None: ...

    def set_run_refs(self, key: str, refs: Mapping[str, str]) -> None:
        """Tags whose values are the store's run ids of other keys."""

    def set_experiment_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_artifact(self, key: str, path: str | os.PathLike[str], artifact_path: str | None = None) -> None: ...

    def log_inputs(self, key: str, inputs: list[dict[str, Any]]) -> None:
        """Dataset inputs: each `{"dataset": <dataset entity fields>, "context": str}`."""

    def operations(self) -> list[dict[str, Any]]:
        """Everything recorded so far, in order (a resumed driver rebuilds its state from it)."""
        ...

    def pending(self) -> int: ...

    def flush(self, force: bool = False) -> int:
        """Send what is pending; returns how many operations are still pending."""
        ...
