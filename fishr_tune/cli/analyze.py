"""`fishr-tune analyze`: read a sweep's records, select models, print the tables, write what was asked for."""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

import click

from fishr_tune import records
from fishr_tune.cli.common import exits_2_on_bad_input

if TYPE_CHECKING:
    from fishr_tune.analysis.pipeline import BestConfigs


ANALYZE_HELP = """Best configurations and DomainBed-style results under the three model-selection methods.

\b
Sources (one of):
  --experiment NAME   a sweep's MLflow experiment (its trial runs) in --tracking-uri
  --records PATH      a Ray Tune results dir, a parquet export (--export), or a directory of
                      results.jsonl files (a DomainBed sweep output dir, fishr-tune train dirs)

Per dataset, a table: rows are algorithms, columns the test environments then their average; each cell is
the test accuracy of the selected checkpoint, mean ± standard error over trial seeds, in percent. A group
(dataset, algorithm, test env, trial seed) selects one run and checkpoint:

\b
  training_domain  best mean out-split accuracy of the training envs, over every checkpoint
                   of every run: runs stopped early by ASHA compete with the checkpoints they reached.
  leave_one_out    the configuration run with test envs {t} and {t, v} for every other env v;
                   validates on v's accuracy. A step counts only where every such run reached it,
                   so a stopped run removes its configuration's later steps. Needs a 'pairs' sweep
                   with `search: random` (the same configurations in every group, as
                   DomainBed's random sweeps); TPE adapts per group and gives it no candidates.
  oracle           the test env's out split at each run's last checkpoint, as DomainBed's
                   collect_results: truncated runs and runs stopped early count where they stopped.
Ties, as DomainBed: the earliest checkpoint of a run; between runs the higher hparams_seed, then the
run name that sorts last.

--best-config FILE writes the selected run as a `fishr-tune train --config` file (one selected group), or
one best_<algorithm>_te<k>_ts<s>.yaml per group next to FILE instead of FILE (the names are printed);
narrow to one group with --algorithm/--test-env/--trial-seed. It follows --selection (training_domain
when all three methods are shown). A run whose records hold no seed gets a file marked (and a warning)
as not reproducing it.
Plots (PNG) are made only with --plots DIR; when reading MLflow they are also logged to the sweep's parent run.
"""


@click.command(help=ANALYZE_HELP)
@click.option("--experiment", help="MLflow experiment = the sweep's name.")
@click.option("--tracking-uri", default=records.DEFAULT_TRACKING_URI, show_default=True,
              help="MLflow store to read --experiment from.")
@click.option("--records", "records_path", help="Ray results dir, parquet export, or dir of results.jsonl files.")
@click.option("--selection", "selection_name", help="training_domain, leave_one_out or oracle (default: all three).")
@click.option("--format", "output_format", default="table", show_default=True,
              help="table (Rich), markdown, latex or json.")
@click.option("--algorithm", help="Only this algorithm.")
@click.option("--test-env", type=int, help="Only groups with this test environment index.")
@click.option("--trial-seed", type=int, help="Only this trial seed.")
@click.option("--best-config", "best_config", type=click.Path(dir_okay=False),
              help="Write the selected run's TrainConfig YAML here.")
@click.option("--export", "export_path", type=click.Path(dir_okay=False),
              help="Write the long records table as parquet.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), help="Write PNG plots into this directory.")
@click.option("--log-model", "log_model", is_flag=True,
              help="Log each group's selected checkpoint as an MLflow model on its trial run (MLflow source only).")
@click.option("--inconsistency", "with_inconsistency", is_flag=True,
              help="Add each selected model's inconsistency score (needs its checkpoint at the selected step: "
                   "`fishr-tune train` dirs under --records).")
@click.option("--epsilon", type=float, default=0.01, show_default=True, help="The score's eps (with --inconsistency).")
@exits_2_on_bad_input
def analyze(experiment: str | None, tracking_uri: str, records_path: str | None, selection_name: str | None,
            output_format: str, algorithm: str | None, test_env: int | None, trial_seed: int | None,
            best_config: str | None, export_path: str | None, plots_dir: str | None, log_model: bool = False,
            with_inconsistency: bool = False, epsilon: float = 0.01) -> None:
    from fishr_tune.analysis import pipeline, render
    from fishr_tune.analysis.table import export_parquet

    request = pipeline.Request(experiment, tracking_uri, records_path, selection_name, output_format, algorithm,
                               test_env, trial_seed, best_config, export_path, plots_dir, log_model,
                               with_inconsistency, epsilon)
    request.check()
    note = functools.partial(click.echo, err=True)
    source = pipeline.read_source(request, progress=_rich_progress)
    if export_path:
        export_parquet(source.table, export_path)
        note(f"Records: {len(source.table):,} rows written to {export_path}")
    analysis = pipeline.analyze(request, source)
    if output_format == "json":
        click.echo(json.dumps(analysis.json(), sort_keys=True))
    elif output_format == "table":
        render.print_analysis(analysis.summaries, analysis.selected, analysis.varying)
    else:
        click.echo(render.render(analysis.summaries, output_format))
        click.echo()
        click.echo(render.render_selected(analysis.selected, output_format, analysis.varying))
    if analysis.scores is not None and output_format != "json":
        render.print_inconsistency(analysis.scores, epsilon)
    if best_config:
        print_best_configs(pipeline.write_best_configs(request, analysis))
    if log_model and source.sweep is not None:
        for logged in pipeline.log_models(request, source, analysis):
            note(f"Model ({request.method_for_best}): step {logged.step} of run {logged.run_id} rebuilt (validation "
                 f"{100 * logged.val_acc:.2f}%, as recorded) and logged as {logged.model_uri}")
    if plots_dir:
        plots = pipeline.make_plots(request, source, analysis)
        note(f"Plots: {len(plots.paths)} PNG files in {plots_dir}"
             + (" (also logged to the sweep's parent run)" if plots.logged_to_parent else ""))


def print_best_configs(found: BestConfigs) -> None:
    note = functools.partial(click.echo, err=True)
    for written in found.files:
        if written.refused:
            note(f"Warning: {written.path}: fishr-tune train would refuse it: {written.refused}")
        if written.not_reproducing:
            note(f"Warning: {written.path}: {written.not_reproducing}")
    if found.single:
        note(f"Best configuration ({found.method}): {found.files[0].path}")
    else:
        stale = f"; the {found.target} already there is from an earlier analysis" if found.target_existed else ""
        note(f"Best configurations ({found.method}): {len(found.files)} groups selected, so {found.target} was not "
             f"written{stale}; wrote {', '.join(str(f.path) for f in found.files)} (for one file at {found.target}, "
             f"narrow to one group with --algorithm/--test-env/--trial-seed)")


def _rich_progress(items: Any, total: int, description: str) -> Any:
    """A Rich progress bar on stderr while MLflow runs are read (their metric histories are one request each)."""
    from rich.console import Console
    from rich.progress import track

    return track(items, total=total, description=description, console=Console(stderr=True), transient=True)
