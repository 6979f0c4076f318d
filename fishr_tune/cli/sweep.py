"""`fishr-tune sweep`: a search on Ray Tune, from a sweep file."""

from __future__ import annotations

import sys
from typing import Any

import click

from fishr_tune.cli.common import exits_2_on_bad_input
from fishr_tune.errors import ConfigError


@click.command()
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.option("--num-samples", type=int, help="Configurations per group (overrides search.num_samples).")
@click.option("--steps", type=int, help="Optimizer steps per trial (overrides steps).")
@click.option("--name", help="Sweep name = experiment directory under the storage path (overrides name).")
@click.option("--storage-path", help="Where the experiment directory goes (overrides storage_path).")
@click.option("--tracking-uri", help="MLflow tracking URI (overrides tracking_uri).")
@click.option("--address",
              help="Ray cluster to join, e.g. 'auto' or 'host:6379'. Default: a local Ray on this machine.")
@click.option("--num-cpus", type=int,
              help="CPUs of the local Ray (default: all of this machine's). Ignored with --address.")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted sweep in <storage path>/<name>; finished trials are not rerun.")
@exits_2_on_bad_input
def sweep(spec_file: str, address: str | None, num_cpus: int | None, resume: bool, **overrides: Any) -> None:
    """Search hyperparameters on Ray Tune: per-group TPE and ASHA for every (algorithm, test envs, trial seed)."""
    from fishr_tune.sweep.runner import run_sweep
    from fishr_tune.sweep.spec import load_spec

    spec = load_spec(spec_file).with_overrides(**overrides)
    if num_cpus is not None and num_cpus <= 0:
        raise ConfigError(f"--num-cpus: expected a positive number of CPUs, got {num_cpus}")
    summary = run_sweep(spec, resume=resume, address=address, num_cpus=num_cpus)
    for line in summary.lines():
        click.echo(line)
    if summary.interrupted:
        sys.exit(130)
