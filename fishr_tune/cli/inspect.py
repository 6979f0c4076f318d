"""`fishr-tune inspect`: the inconsistency score of one trained run."""

from __future__ import annotations

import click

from fishr_tune.cli.common import exits_2_on_bad_input


@click.command("inspect")
@click.argument("run_dir", type=click.Path())
@click.option("--epsilon", type=float, default=0.01, show_default=True,
              help="eps of the score: A's risk may rise by at most eps.")
@click.option("--damping", type=float, default=1e-3, show_default=True,
              help="H_A + delta I with delta = damping * lambda_max(H_A): bounds the flat directions.")
@click.option("--method", type=click.Choice(["auto", "dense", "lanczos"]), default="auto", show_default=True,
              help="Exact dense Hessians (auto: heads up to 4,096 parameters) or Lanczos on Hessian-vector products.")
@click.option("--data-dir", help="Where the run's data is, if not where config.yaml says.")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True)
@exits_2_on_bad_input
def inspect_command(run_dir: str, epsilon: float, damping: float, method: str, data_dir: str | None, output_format: str) -> None:
    """Inconsistency score of a trained run (a `fishr-tune train` output dir) on its training environments.

    I^eps = max over ordered pairs (A, B) of R_B - R_A + max_{1/2 t'H_A t <= eps} 1/2 t'H_B t, on the classifier head
    at the run's checkpoint: per-domain risks, both terms per pair, the score (exact, and with Fishr's diagonal
    gradient variances in place of the Hessians) and Fishr's gradient-variance penalty.
    """
    from fishr_tune.analysis import inspect as inspection

    result = inspection.inspect_run(run_dir, epsilon=epsilon, damping=damping, method=method,  # type: ignore[arg-type]
                                    data_dir=data_dir)
    if output_format == "json":
        click.echo(inspection.format_json(result))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    for title, header, rows in inspection.table_lines(result):
        table = Table(title=title)
        for i, column in enumerate(header):
            table.add_column(column, justify="left" if i < 2 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
