"""The decisions `fishr-tune analyze` makes, stage by stage, each returning what the command prints.

The stages run in the command's order (read, export, select, best configs, models, plots) so that what one
prints comes before the next one's refusal, as the user reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from fishr_tune.analysis import best_config, readers, table
from fishr_tune.analysis.mlflow_reader import MlflowSweep, Progress, from_mlflow, no_progress
from fishr_tune.analysis.render import OUTPUT_FORMATS, results_json
from fishr_tune.analysis.selection import SELECTION_METHODS
from fishr_tune.errors import ConfigError, quote
from fishr_tune.files import check_can_create

if TYPE_CHECKING:
    from fishr_tune.analysis.inspect import SelectedScore
    from fishr_tune.analysis.model_export import LoggedModel

BEST_BY_DEFAULT = "training_domain"  # what --best-config and --log-model follow when all three methods are shown


@dataclass(frozen=True)
class Request:
    """The command's options, checked before anything is read."""

    experiment: str | None
    tracking_uri: str
    records_path: str | None
    selection_name: str | None
    output_format: str
    algorithm: str | None = None
    test_env: int | None = None
    trial_seed: int | None = None
    best_config: str | None = None
    export_path: str | None = None
    plots_dir: str | None = None
    log_model: bool = False
    with_inconsistency: bool = False
    epsilon: float = 0.01

    def check(self) -> None:
        if self.output_format not in OUTPUT_FORMATS:
            raise ConfigError(f"--format: expected one of {', '.join(OUTPUT_FORMATS)}, got {quote(self.output_format)}")
        if self.selection_name is not None and self.selection_name not in SELECTION_METHODS:
            raise ConfigError(
                f"--selection: expected one of {', '.join(SELECTION_METHODS)}, got {quote(self.selection_name)}")
        if (self.experiment is None) == (self.records_path is None):
            raise ConfigError("give exactly one source: --experiment NAME (MLflow) or --records PATH")
        if self.log_model and self.experiment is None:
            raise ConfigError("--log-model: needs --experiment (the models go to the sweep's MLflow trial runs)")
        for flag, target, is_dir in (("--best-config", self.best_config, False), ("--export", self.export_path, False),
                                     ("--plots", self.plots_dir, True)):
            if target:
                check_can_create(target, flag, directory=is_dir)

    @property
    def methods(self) -> tuple[str, ...]:
        return (self.selection_name,) if self.selection_name else SELECTION_METHODS

    @property
    def method_for_best(self) -> str:
        """The one method a best config or a logged model follows: --selection's, else training_domain."""
        methods = self.methods
        return BEST_BY_DEFAULT if (self.best_config or self.log_model) and len(methods) != 1 else methods[0]


@dataclass
class Source:
    table: pd.DataFrame
    sweep: MlflowSweep | None  # None for --records


def read_source(request: Request, progress: Progress = no_progress) -> Source:
    sweep = None
    if request.experiment is not None:
        sweep = from_mlflow(request.tracking_uri, request.experiment, progress=progress)
        found = sweep.table
    else:
        found = readers.gather_files(request.records_path)  # type: ignore[arg-type]
    if found.empty:
        where = "experiment " + repr(request.experiment) if request.experiment else request.records_path
        raise ConfigError(f"no records in {where}")
    return Source(found, sweep)


@dataclass
class Analysis:
    prepared: pd.DataFrame  # the selection table, filtered to the groups asked for
    selected: dict[str, pd.DataFrame]  # per method: one row per group
    summaries: dict[str, pd.DataFrame]
    varying: dict[tuple[str, str], list[str]]
    scores: dict[str, list[SelectedScore]] | None = None  # with --inconsistency
    _best: dict[str, list[best_config.BestConfig]] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        results = results_json(self.summaries)
        if self.scores is not None:
            results["inconsistency"] = {m: [asdict(s) for s in found] for m, found in self.scores.items()}
        return results

    def selected_by(self, method: str) -> pd.DataFrame:
        if method not in self.selected:
            self.selected.update(table.selections(self.prepared, (method,)))
        return self.selected[method]

    def best_configs(self, method: str) -> list[best_config.BestConfig]:
        """Each selected group's run as a config: --best-config writes them, --log-model rebuilds them (built once)."""
        if method not in self._best:
            self._best[method] = best_config.best_configs(self.prepared, self.selected_by(method), method)
        return self._best[method]


def analyze(request: Request, source: Source) -> Analysis:
    prepared = table.filter_groups(table.selection_table(source.table), algorithm=request.algorithm,
                                   test_env=request.test_env, trial_seed=request.trial_seed)
    if prepared.empty:
        raise ConfigError("no records left after --algorithm/--test-env/--trial-seed")
    selected = table.selections(prepared, request.methods)
    if request.test_env is not None:  # a run holding out two envs counts for both: show the one asked for
        selected = {m: f[f["test_env"] == request.test_env] for m, f in selected.items()}
    found = Analysis(prepared, selected, table.summaries_of(selected), table.varying_hparams(prepared))
    if request.with_inconsistency:
        from fishr_tune.analysis.inspect import score_selected

        found.scores = {m: score_selected(f, request.records_path, request.epsilon) for m, f in selected.items()}
    return found


@dataclass
class WrittenConfig:
    path: Path
    refused: str | None  # why `fishr-tune train` would refuse the file
    not_reproducing: str | None  # why rerunning it would not give the selected run's records


@dataclass
class BestConfigs:
    method: str
    target: str  # --best-config
    files: list[WrittenConfig]
    target_existed: bool  # with several files, the one at target is from an earlier analysis

    @property
    def single(self) -> bool:
        return len(self.files) == 1


def write_best_configs(request: Request, analysis: Analysis) -> BestConfigs:
    """One group selected: the file at --best-config; several: one file per group next to it."""
    assert request.best_config is not None
    method = request.method_for_best
    bests = analysis.best_configs(method)
    existed = Path(request.best_config).exists()
    written = best_config.write_best_configs(bests, request.best_config)
    files = [WrittenConfig(path, best_config.check_best_config(best), best.reproduction_problem())
             for best, path in zip(bests, written)]
    return BestConfigs(method, request.best_config, files, existed)


def log_models(request: Request, source: Source, analysis: Analysis) -> list[LoggedModel]:
    from fishr_tune.analysis.mlflow_writer import log_selected_models

    assert source.sweep is not None
    return log_selected_models(source.sweep, analysis.prepared, analysis.best_configs(request.method_for_best))


@dataclass
class Plots:
    paths: Sequence[Path]
    logged_to_parent: bool  # also artifacts of the sweep's parent run


def make_plots(request: Request, source: Source, analysis: Analysis) -> Plots:
    from fishr_tune.analysis.plots import make_plots as draw

    assert request.plots_dir is not None
    sweep = source.sweep
    paths = draw(analysis.prepared, request.plots_dir, sweep.spaces if sweep is not None else None)
    if sweep is not None:
        from fishr_tune.analysis.mlflow_writer import log_plots_to_mlflow

        log_plots_to_mlflow(sweep, paths)
    return Plots(paths, bool(sweep and sweep.parent_run_id))
