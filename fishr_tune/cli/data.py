"""`fishr-tune data ...`: download image datasets and check a data directory."""

from __future__ import annotations

from typing import Any

import click

from fishr_tune.cli.common import RegistryHelpCommand, exits_2_on_bad_input
from fishr_tune.errors import ConfigError


@click.group()
def data() -> None:
    """Image datasets in DomainBed's folders: download them (online) and check a data directory."""


def _download_help() -> str:
    from fishr_tune.data.catalog import IMAGE_DATASETS

    return f"Fetch, verify, unpack and count one of {', '.join(IMAGE_DATASETS)} (needs internet)."


@data.command("download", cls=RegistryHelpCommand, help_from=lambda: _download_help())
@click.argument("name")
@click.option("--data-dir", required=True, help="Where the dataset folder goes (DATA_DIR/<dataset folder>/...).")
@click.option("--keep-archives", is_flag=True, help="Keep the downloaded archives next to the data.")
@exits_2_on_bad_input
def data_download(name: str, data_dir: str, keep_archives: bool) -> None:
    from pathlib import Path

    from fishr_tune.data.download import check_data_dir, download_dataset

    Path(data_dir).expanduser().mkdir(parents=True, exist_ok=True)
    folder = download_dataset(name, data_dir, keep_archives=keep_archives)
    click.echo(f"{name}: unpacked into {folder}")
    print_data_reports(check_data_dir(data_dir, [name]))


@data.command("check")
@click.option("--data-dir", required=True,
              help="The directory holding DomainBed's dataset folders (VLCS/, PACS/, ...).")
@click.option("--dataset", "names", multiple=True, help="Check only this dataset (repeatable). Default: all five.")
@exits_2_on_bad_input
def data_check(data_dir: str, names: tuple[str, ...]) -> None:
    """Which image datasets are present and complete: environments, classes and images against DomainBed's counts.

    Exits 2 when a dataset's folder is invalid (it would not load), or a dataset named with --dataset is missing,
    so a script can gate on it; incomplete or differing datasets still load and exit 0.
    """
    from fishr_tune.data.download import check_data_dir

    reports = check_data_dir(data_dir, list(names) or None)
    print_data_reports(reports)
    unusable = [r for r in reports if r.status == "invalid" or (r.status == "missing" and r.name in names)]
    if unusable:
        raise ConfigError("; ".join(f"{r.name}: {r.status} ({r.folder})" for r in unusable))


def print_data_reports(reports: list[Any]) -> None:
    """One Rich table row per dataset, then the problems found (each names its folder)."""
    from rich.console import Console
    from rich.table import Table

    from fishr_tune.data.images import IMAGE_DATASETS

    colours = {"complete": "green", "differs": "yellow", "incomplete": "yellow", "invalid": "red", "missing": "dim"}
    table = Table(title="Image datasets")
    for column in ("dataset", "status", "folder", "classes", "images per environment", "images"):
        table.add_column(column)
    for report in reports:
        info = IMAGE_DATASETS[report.name]
        per_env = ", ".join(f"{env} {count:,}" for env, count in report.environments.items()) or "-"
        classes = f"{report.num_classes}/{info.num_classes}" if report.num_classes is not None else f"-/{info.num_classes}"
        table.add_row(report.name, f"[{colours[report.status]}]{report.status}[/]", str(report.folder), classes, per_env,
                      f"{report.images:,}/{info.total_images:,}")
    console = Console(width=160)
    console.print(table)
    for report in reports:
        for problem in report.problems:
            console.print(f"{report.name}: {problem}", markup=False, highlight=False)
