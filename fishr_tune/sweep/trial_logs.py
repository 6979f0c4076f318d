"""Keeping every record of a retried trial: its log files are saved to the sweep's storage before Tune retries it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ray.tune import Callback

# What Tune's JSON and CSV loggers write per trial on the driver, and copy back from the storage when a trial starts again.
TRIAL_LOG_FILES = ("result.json", "progress.csv")


class KeepTrialLogsOnRetry(Callback):  # type: ignore[misc]
    """Uploads a failed trial's log files to the sweep's storage before Tune retries it.

    A trial that starts again from a checkpoint gets its result.json and progress.csv copied back from the
    storage over the driver's copies, and the storage holds them only as of Tune's last background sync: the
    records logged since (the checkpoint the retry resumes from among them) would vanish from result.json, and
    with them from `fishr-tune analyze`. Must come after any callback that logs on on_trial_recover.
    """

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        import pyarrow.fs

        storage = trial.storage
        try:
            storage.storage_filesystem.create_dir(storage.trial_fs_path, recursive=True)
            for name in TRIAL_LOG_FILES:
                local = Path(trial.local_path, name)
                if local.exists():
                    pyarrow.fs.copy_files(local.as_posix(), f"{storage.trial_fs_path}/{name}",
                                          destination_filesystem=storage.storage_filesystem)
        except Exception as error:  # noqa: BLE001  (the retry must go on; at worst its log misses records)
            print(f"warning: could not save the logs of trial {trial.trial_id} before its retry: {error}", file=sys.stderr)
