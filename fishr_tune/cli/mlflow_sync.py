"""`fishr-tune mlflow-sync`: send what a sweep could not send to MLflow while it ran."""

from __future__ import annotations

import sys

import click

from fishr_tune.cli.common import exits_2_on_bad_input


@click.command("mlflow-sync")
@click.argument("experiment_dir", type=click.Path(file_okay=False))
@click.option("--tracking-uri",
              help="Send to this tracking URI instead of the sweep's own (e.g. after the server moved).")
@exits_2_on_bad_input
def mlflow_sync(experiment_dir: str, tracking_uri: str | None) -> None:
    """Send a sweep's MLflow records that could not be sent while it ran (server down or unreachable).

    EXPERIMENT_DIR is the sweep's directory (<storage path>/<name>), or the journal directory that the sweep's
    summary names (for sweeps stored on S3 or GCS the journal stays on the driver, under ~/.cache/fishr-tune).
    Safe to run any number of times, also while the sweep runs: nothing is sent twice.
    """
    from pathlib import Path

    from fishr_tune.sweep.storage import JOURNAL_DIR
    from fishr_tune.tracking import MlflowJournal

    directory = Path(experiment_dir)
    if not (directory / "settings.json").exists():  # the sweep's directory rather than its journal
        directory = directory / JOURNAL_DIR
    journal = MlflowJournal.open_existing(directory, tracking_uri)
    before = journal.pending()
    remaining = journal.flush(force=True)
    if remaining:
        click.echo(f"{before - remaining} of {before} operations sent to {journal.tracking_uri}; {remaining} still pending "
                   f"({journal.last_error})", err=True)
        sys.exit(1)
    click.echo(f"{before} operations sent to {journal.tracking_uri}; nothing pending")
