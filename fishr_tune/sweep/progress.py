"""The sweep's live display: per group, trials running / finished / stopped early / failed and the best val_acc."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TextIO

from ray.tune import Callback

from fishr_tune.sweep.outcomes import GroupCounts, count_groups
from fishr_tune.sweep.spec import SweepSpec


class ProgressCallback(Callback):  # type: ignore[misc]
    """Per group: trials running / finished / stopped early / failed and the best val_acc so far.

    A Rich live table on a terminal, otherwise a line per group whenever the counts change (at most every few s).
    """

    def __init__(self, spec: SweepSpec, stream: TextIO | None = None, interval_s: float = 5.0):
        self.spec = spec
        self.stream = stream or sys.stdout
        self.interval_s = interval_s
        self.last_print = -math.inf  # the first update shows at once, whatever time.monotonic() counts from
        self.last_state: Any = None
        self.live: Any = None
        self.trials: list[Any] = []
        self.completed: set[str] = set()  # trials Tune completed in this session (returned or stopped)
        self.restored_ended: set[str] | None = None  # trials already TERMINATED when this session's loop began

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the experiment: keep the settings, drop the terminal and the trials."""
        return {"spec": self.spec, "interval_s": self.interval_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"], None, state["interval_s"])  # type: ignore[misc]

    def _table(self, groups: dict[str, GroupCounts]) -> Any:
        from rich.table import Table

        table = Table(title=f"sweep {self.spec.name}")
        for column in ("group", "running", "finished", "stopped early", "failed", "best val_acc"):
            table.add_column(column, justify="left" if column == "group" else "right")
        for key, c in groups.items():
            best = "-" if c.best_val_acc is None else f"{c.best_val_acc:.4f}"
            table.add_row(key, str(c.running), str(c.finished), str(c.stopped_early), str(c.failed), best)
        return table

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.completed.add(trial.trial_id)

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self._note_restored(trials)

    def _note_restored(self, trials: Sequence[Any]) -> None:
        if self.restored_ended is None:
            self.restored_ended = {t.trial_id for t in trials if t.status == "TERMINATED"}

    @property
    def ended(self) -> set[str]:
        """Trials known to have ended: completed in this session, or restored already TERMINATED by --resume.

        Tune restores a trial that an interruption cut off as pending and runs it on, so one that comes back
        TERMINATED had ended in an earlier session, even where the saved state lost the `done` of its last result
        (Tune can snapshot that result before marking it)."""
        return self.completed | (self.restored_ended or set())

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self.trials = trials
        now = time.monotonic()
        if now - self.last_print < (1.0 if self.live is not None else self.interval_s):
            return
        self.show(trials)
        self.last_print = now

    def show(self, trials: Sequence[Any]) -> None:
        groups = count_groups(trials, self.spec, self.ended)
        if self.stream.isatty():
            from rich.console import Console
            from rich.live import Live

            if self.live is None:
                self.live = Live(self._table(groups), console=Console(file=self.stream), auto_refresh=False)
                self.live.start()
            self.live.update(self._table(groups), refresh=True)
            return
        state = {k: asdict(v) for k, v in groups.items()}
        if state == self.last_state:
            return
        self.last_state = state
        stamp = time.strftime("%H:%M:%S")
        for key, c in groups.items():
            best = "-" if c.best_val_acc is None else f"{c.best_val_acc:.4f}"
            print(f"[{stamp}] {key}: {c.running} running, {c.finished} finished, {c.stopped_early} stopped early, "
                  f"{c.failed} failed, best val_acc {best}", file=self.stream, flush=True)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._note_restored(trials)  # a resume of a sweep whose trials had all ended never steps: all are restored
        self.trials = trials
        self.show(trials)
        if self.live is not None:
            self.live.stop()
            self.live = None
