"""Gather records from any source into one long table, select models, and write best configurations and plots.

Sources: the MLflow store (a sweep's experiment), a Ray Tune results directory, a parquet export, or any
directory of results.jsonl files (a DomainBed sweep output directory, or `fishr-tune train` output dirs).
Every source becomes the same table: one row per record, flattened with `hparams.<name>` and
`args.<name>` columns (records.flatten), plus `run` naming the run it came from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fishr_tune import records
from fishr_tune.domainbed_names import to_our_names
from fishr_tune.errors import ConfigError, quote
from fishr_tune.selection import GROUP, SELECTION_METHODS, env_count, select, summarize, training_domain_scores

RAY_RESULT_FILE = "result.json"
RUN = "run"
MLFLOW_RUN_ID = "mlflow_run_id"
# Settings of the sweep (its parent run's params) that every trial shares: what best.yaml needs besides the trial's own.
SWEEP_ARGS = ("steps", "checkpoint_freq", "holdout_fraction", "label_noise", "data_dir")
TRAIN_CONFIG_ARGS = ("seed", "steps", "checkpoint_freq", "holdout_fraction", "label_noise", "data_dir")
# Args whose TrainConfig default would silently change the rerun's accuracies when a record lacks them.
REPRODUCING_ARGS = ("seed", "holdout_fraction")

Progress = Callable[[Iterable[Any], int, str], Iterable[Any]]


def _no_progress(items: Iterable[Any], total: int, description: str) -> Iterable[Any]:
    return items


# --- gatherers ---------------------------------------------------------------------------------------------------


def from_results_dirs(root: Path) -> pd.DataFrame:
    """Every results.jsonl below root; the run is its directory relative to root."""
    rows = []
    for path in records.iter_files(root):
        run = str(path.parent.relative_to(root)) or "."
        for record in records.read(path):
            rows.append({**records.flatten(record), RUN: run})
    return pd.DataFrame(rows)


def from_ray_results(root: Path) -> pd.DataFrame:
    """Ray Tune trial directories (result.json per trial): the reported metrics are flattened records.

    Tune logs a result before it registers the checkpoint that came with it, so a sweep stopped in between
    (Ctrl-C, a lost driver) resumes that trial from the checkpoint before and logs its last records again;
    resume is exact, so the replayed record equals the first and is kept once.
    """
    rows = []
    for path in sorted(root.rglob(RAY_RESULT_FILE)):
        for result in records.read_lines(path):  # torn or garbled lines skipped with a warning, not fatal
            if "step" not in result or not any(str(k).startswith("env") for k in result):
                continue  # a failure report or a result that is not a record
            row = {k: v for k, v in result.items() if k in ("step", "epoch", "val_acc") or k.startswith(
                ("env", "hparams.", "args.", "loss", "nll", "penalty", "step_time"))}
            row[RUN] = str(result.get("trial_id") or path.parent.name)
            rows.append(row)
    table = pd.DataFrame(rows)
    return table.drop_duplicates([RUN, "step"], keep="last", ignore_index=True) if rows else table


def from_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError; a garbage file lands here
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ConfigError(f"--records: {path} is not a readable parquet file ({reason})") from None


def gather_files(path: str | Path) -> pd.DataFrame:
    """Detect the kind of source at `path` and read it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--records: {path} does not exist")
    if path.is_file():
        if path.suffix == ".parquet":
            return from_parquet(path)
        if path.name == records.RESULTS_FILE:
            return from_results_dirs(path.parent)
        raise ConfigError(f"--records: {path} is neither a parquet export nor a results.jsonl")
    if any(path.rglob(records.RESULTS_FILE)):
        return from_results_dirs(path)
    if any(path.rglob(RAY_RESULT_FILE)):
        return from_ray_results(path)
    raise ConfigError(f"--records: no results.jsonl (DomainBed / fishr-tune train) or result.json (Ray Tune) under {path}")


def _decode_param(value: str, keep_string: bool = False) -> Any:
    """MLflow params are strings; fishr-tune JSON-encodes every value that was not a string (tracking._param_value)."""
    if keep_string:
        return value
    try:
        return json.loads(value)
    except (json.JSONDecodeError, ValueError):
        return value


def _string_hparams(algorithm: str, dataset: str) -> set[str]:
    """Hyperparameters whose registry default is a string: their params are logged raw, never JSON-decoded."""
    try:
        from fishr_tune.hparams import default_hparams

        return {k for k, v in default_hparams(algorithm, dataset).items() if isinstance(v, str)}
    except (ConfigError, KeyError, ValueError):
        return set()


@dataclass
class MlflowSweep:
    """What analyze read from one MLflow experiment: the records table and the sweep's parent run (for artifacts)."""

    table: pd.DataFrame
    tracking_uri: str
    experiment_id: str
    parent_run_id: str | None
    spaces: dict[str, dict[str, str]] | None = None  # algorithm -> hparam -> distribution kind (the parent's SPACE_TAG)


def _check_store(tracking_uri: str) -> None:
    """A sqlite URI naming no file would make MLflow create an empty store: refuse instead."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return
    path = Path(tracking_uri[len(prefix):])
    if not path.exists():
        raise ConfigError(f"--tracking-uri: no MLflow store at {path} (pass --tracking-uri or --records)")
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as error:
        raise ConfigError(f"--tracking-uri: cannot read {path} ({error.strerror or error})") from None
    if header and header != SQLITE_HEADER:  # an empty file is a new, empty SQLite database
        raise ConfigError(f"--tracking-uri: {path} is not an SQLite database (so not an MLflow store)")


SQLITE_HEADER = b"SQLite format 3\x00"


def _all_runs(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def from_mlflow(tracking_uri: str, experiment: str, progress: Progress = _no_progress) -> MlflowSweep:
    """The child (trial) runs of a sweep's experiment, one row per (run, step) as records.flatten would give."""
    from mlflow.tracking import MlflowClient

    from fishr_tune.tracking import quick_failures

    _check_store(tracking_uri)
    quick_failures()
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments())
        raise ConfigError(f"--experiment: no experiment {quote(experiment)} in {tracking_uri}; existing: {', '.join(names) or 'none'}")
    experiment_id = found.experiment_id
    parents = _all_runs(client, experiment_id, f"tags.`{records.KIND_TAG}` = '{records.KIND_SWEEP}'")
    parent = parents[0] if parents else None
    sweep_args = {}
    if parent is not None:
        sweep_args = {k: _decode_param(parent.data.params[k]) for k in SWEEP_ARGS if k in parent.data.params}
    trials = sorted(_all_runs(client, experiment_id, f"tags.`{records.KIND_TAG}` = '{records.KIND_TRIAL}'"),
                    key=lambda r: r.data.tags.get("ray_trial_id", r.info.run_id))
    rows: list[dict[str, Any]] = []
    for run in progress(trials, len(trials), f"Reading {len(trials)} runs of {experiment}"):
        rows.extend(_mlflow_run_rows(client, run, sweep_args))
    spaces = json.loads(parent.data.tags[records.SPACE_TAG]) if parent is not None and records.SPACE_TAG in parent.data.tags else None
    return MlflowSweep(pd.DataFrame(rows), tracking_uri, experiment_id, parent.info.run_id if parent else None, spaces)


def _mlflow_run_rows(client: Any, run: Any, sweep_args: Mapping[str, Any]) -> list[dict[str, Any]]:
    tags = run.data.tags
    args: dict[str, Any] = dict(sweep_args)
    if records.ARGS_TAG in tags:  # the trial's own args, as its first record held them
        args.update(json.loads(tags[records.ARGS_TAG]))
    else:
        args.update({"dataset": tags.get("dataset"), "algorithm": tags.get("algorithm"),
                     "test_envs": json.loads(tags.get("test_envs", "[]")), "trial_seed": int(tags.get("trial_seed", 0))})
    keep_strings = _string_hparams(str(args.get("algorithm")), str(args.get("dataset")))
    base = {f"hparams.{k}": _decode_param(v, k in keep_strings) for k, v in run.data.params.items()}
    base.update({f"args.{k}": v for k, v in args.items()})
    base[RUN] = tags.get("ray_trial_id", run.info.run_id)
    base[MLFLOW_RUN_ID] = run.info.run_id
    by_step: dict[int, dict[str, Any]] = {}
    for metric in sorted(run.data.metrics):
        for point in client.get_metric_history(run.info.run_id, metric):
            by_step.setdefault(int(point.step), {records.STEP: int(point.step)})[metric] = point.value
    return [{**base, **by_step[step]} for step in sorted(by_step)]


def export_parquet(table: pd.DataFrame, path: str | Path) -> Path:
    """The long table as parquet (`--records` reads it back); object columns of mixed types become JSON text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        table.to_parquet(path, index=False)
    except (TypeError, ValueError, ImportError) as error:
        if isinstance(error, ImportError):
            raise
        fixed = table.copy()
        for column in fixed.columns:
            if fixed[column].dtype == object:
                kinds = {type(v) for v in fixed[column] if v is not None and not (isinstance(v, float) and math.isnan(v))}
                if len(kinds) > 1:
                    fixed[column] = fixed[column].map(lambda v: None if v is None else json.dumps(_plain(v), default=str))
        fixed.to_parquet(path, index=False)
    return path


# --- the selection table -------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """numpy scalars and arrays (parquet gives lists back as arrays) as plain Python values."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _config_key(values: Mapping[str, Any]) -> str:
    return json.dumps({k[len("hparams."):]: _plain(v) for k, v in values.items() if not _missing(v)}, sort_keys=True, default=str)


def _test_envs_tuple(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):  # a JSON list (a parquet export of mixed columns, or a tag)
        value = json.loads(value)
    if isinstance(value, (int, np.integer)):
        return (int(value),)
    return tuple(int(e) for e in _plain(value))


def selection_table(table: pd.DataFrame) -> pd.DataFrame:
    """The columns that selection needs, from a gathered long table.

    Everything that is constant within a run (dataset, algorithm, test envs, trial seed, planned steps, the
    configuration key) is computed once per run from its first row and broadcast, so this stays linear in
    numpy rather than in Python calls per record.
    """
    if table.empty:
        raise ConfigError("no records: the source holds no checkpoint records")
    needed = ["args.dataset", "args.algorithm", "args.test_envs", "args.trial_seed", "step", RUN]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ConfigError(f"records lack {', '.join(missing)}: not fishr-tune or DomainBed records")
    out = table.reset_index(drop=True)
    out = out.assign(**{RUN: out[RUN].astype(str)})
    run_codes, run_names = pd.factorize(out[RUN], sort=False)
    first_rows = pd.Series(np.arange(len(out))).groupby(run_codes).first().to_numpy()
    runs = out.iloc[first_rows]
    hparam_columns = sorted(c for c in out.columns if str(c).startswith("hparams."))
    per_run = pd.DataFrame({
        "dataset": runs["args.dataset"].astype(str).to_numpy(),
        "algorithm": runs["args.algorithm"].astype(str).to_numpy(),
        "test_envs": [_test_envs_tuple(v) for v in runs["args.test_envs"]],
        "trial_seed": runs["args.trial_seed"].astype(int).to_numpy(),
        # DomainBed breaks ties between runs by hparams_seed (selection.py); our sweeps' trials all have 0
        "hparams_seed": (pd.to_numeric(runs["args.hparams_seed"], errors="coerce").fillna(0).astype(int).to_numpy()
                         if "args.hparams_seed" in runs else np.zeros(len(runs), dtype=int)),
        "config": [_config_key(v) for v in runs[hparam_columns].to_dict("records")] if hparam_columns else "{}",
    })
    for column in per_run.columns:
        values = per_run[column].to_numpy()
        out[column] = pd.Series(values[run_codes], index=out.index, dtype=object if column in ("test_envs", "config") else None)
    out["step"] = out["step"].astype(int)
    last_step = out.groupby(run_codes)["step"].transform("max")
    # DomainBed records have no (or a null) args.steps: the longest run of the group sets the final step.
    inferred = out.groupby(["dataset", "algorithm", "trial_seed"])["step"].transform("max") + 1
    if "args.steps" in out.columns:
        planned = pd.to_numeric(out["args.steps"], errors="coerce")
        out["steps"] = planned.fillna(inferred).astype(int)
    else:
        out["steps"] = inferred.astype(int)
    out["last_step"] = last_step.astype(int)
    return out


def filter_groups(prepared: pd.DataFrame, algorithm: str | None = None, test_env: int | None = None,
                  trial_seed: int | None = None, dataset: str | None = None) -> pd.DataFrame:
    """Keep the records of the named algorithm / test env / trial seed (a run counts for every env it holds out)."""
    keep = np.ones(len(prepared), dtype=bool)
    if dataset is not None:
        keep &= (prepared["dataset"] == dataset).to_numpy()
    if algorithm is not None:
        keep &= (prepared["algorithm"] == algorithm).to_numpy()
    if trial_seed is not None:
        keep &= (prepared["trial_seed"] == trial_seed).to_numpy()
    if test_env is not None:
        codes, uniques = pd.factorize(prepared["test_envs"])
        holds = np.array([test_env in envs for envs in uniques], dtype=bool)
        keep &= holds[codes] if len(uniques) else keep
    return prepared[keep]


def selections(prepared: pd.DataFrame, methods: Sequence[str] = SELECTION_METHODS) -> dict[str, pd.DataFrame]:
    for method in methods:
        if method not in SELECTION_METHODS:
            raise ConfigError(f"--selection: expected one of {', '.join(SELECTION_METHODS)}, got {quote(method)}")
    return {method: select(prepared, method) for method in methods}


def summaries_of(selected: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    return {method: summarize(frame) for method, frame in selected.items()}


def summaries(table: pd.DataFrame, methods: Sequence[str] = SELECTION_METHODS) -> dict[str, pd.DataFrame]:
    return summaries_of(selections(selection_table(table), methods))


def results_json(summaries: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """{selection: {dataset: {algorithm: {"<test env>": {"mean", "se", "n"}, ..., "avg": {...}}}}}."""
    out: dict[str, Any] = {}
    for method, summary in summaries.items():
        node = out.setdefault(method, {})
        for row in summary.to_dict("records"):
            se = None if pd.isna(row["se"]) else float(row["se"])  # no complete trial seed behind an average
            cell = {"mean": float(row["mean"]), "se": se, "n": int(row["n"])}
            node.setdefault(str(row["dataset"]), {}).setdefault(str(row["algorithm"]), {})[str(row["test_env"])] = cell
    return out


def varying_hparams(prepared: pd.DataFrame) -> dict[tuple[str, str], list[str]]:
    """Per (dataset, algorithm): the hyperparameters whose value differs between runs (the ones a reader cares about)."""
    out: dict[tuple[str, str], list[str]] = {}
    first = prepared.drop_duplicates(RUN)
    for (dataset, algorithm), part in first.groupby(["dataset", "algorithm"], sort=True):
        configs = [json.loads(c) for c in part["config"].unique()]
        names = sorted(set().union(*configs)) if configs else []
        out[(str(dataset), str(algorithm))] = [
            n for n in names if len({json.dumps(c.get(n), sort_keys=True, default=str) for c in configs}) > 1
        ]
    return out


# --- best configurations ---------------------------------------------------------------------------------------


@dataclass
class BestConfig:
    dataset: str
    algorithm: str
    test_env: int
    trial_seed: int
    run: str
    step: int
    val_acc: float
    test_acc: float
    method: str
    config: dict[str, Any]  # a TrainConfig's fields
    unknown: tuple[str, ...] = ()  # REPRODUCING_ARGS the run's records lack: the rerun uses defaults instead
    left_out: Mapping[str, Any] = field(default_factory=dict)  # DomainBed names with nothing to say here (domainbed_names)

    def file_name(self, with_dataset: bool = False) -> str:
        dataset = f"{self.dataset}_" if with_dataset else ""
        return f"best_{dataset}{self.algorithm}_te{self.test_env}_ts{self.trial_seed}.yaml"

    def reproduction_problem(self) -> str | None:
        """Why rerunning this file would not give the selected run's records, or None when it would."""
        if not self.unknown:
            return None
        names = ", ".join(f"args.{name}" for name in self.unknown)
        return (f"the records of run {self.run} hold no {names} (e.g. an MLflow trial run without the {records.ARGS_TAG} tag), "
                f"so `fishr-tune train` falls back to the default and will not reproduce step {self.step}")

    def yaml_text(self) -> str:
        import yaml

        problem = self.reproduction_problem()
        rerun = (f"# NOT A REPRODUCTION: {problem}\n" if problem else
                 f"# rerun: fishr-tune train --config <this file> (the record at step {self.step} is the selected checkpoint)\n")
        header = (
            f"# fishr-tune analyze ({self.method}): {self.dataset} {self.algorithm}, test env {self.test_env}, "
            f"trial seed {self.trial_seed}\n"
            f"# selected run {self.run} at step {self.step}: validation {100 * self.val_acc:.2f}%, "
            f"test {100 * self.test_acc:.2f}%\n"
        )
        if self.left_out:
            names = ", ".join(f"{name}={json.dumps(value)}" for name, value in self.left_out.items())
            header += f"# DomainBed hyperparameters left out (fishr-tune does this anyway, or the run never read them): {names}\n"
        return header + rerun + yaml.safe_dump(self.config, sort_keys=False)


def best_configs(prepared: pd.DataFrame, selected: pd.DataFrame, method: str) -> list[BestConfig]:
    """A `fishr-tune train --config` file's content for every selected run: its args and fully resolved hparams.

    A run whose records lack a seed or split fraction still gets its file (the hyperparameters are the result),
    but `unknown` names what is missing so the file and the command say it does not reproduce the run.
    """
    hparam_columns = [c for c in prepared.columns if str(c).startswith("hparams.")]
    first = prepared.drop_duplicates(RUN).set_index(RUN)
    found = []
    for row in selected.to_dict("records"):
        run = first.loc[row[RUN]]
        hparams = {c[len("hparams."):]: _plain(run[c]) for c in hparam_columns if not _missing(_plain(run[c]))}
        left_out: dict[str, Any] = {}
        try:  # a DomainBed run's names become ours; where they cannot, check_best_config says why
            hparams, left_out = to_our_names(hparams, str(row["dataset"]), f"run {row[RUN]}", from_records=True)
        except ConfigError:
            pass
        config: dict[str, Any] = {
            "dataset": str(row["dataset"]), "algorithm": str(row["algorithm"]), "test_envs": list(run["test_envs"]),
            "hparams": hparams, "hparams_seed": 0, "trial_seed": int(row["trial_seed"]),
        }
        for name in TRAIN_CONFIG_ARGS:
            value = _plain(run.get(f"args.{name}")) if f"args.{name}" in run.index else None
            if name == "steps":
                value = int(run["steps"])
            if not _missing(value):
                config[name] = int(value) if name in ("seed", "steps", "checkpoint_freq") else value
        found.append(BestConfig(
            dataset=str(row["dataset"]), algorithm=str(row["algorithm"]), test_env=int(row["test_env"]),
            trial_seed=int(row["trial_seed"]), run=str(row[RUN]), step=int(row["step"]), val_acc=float(row["val_acc"]),
            test_acc=float(row["test_acc"]), method=method, config=config,
            unknown=tuple(name for name in REPRODUCING_ARGS if name not in config), left_out=left_out,
        ))
    return found


def check_best_config(best: BestConfig) -> str | None:
    """Why `fishr-tune train` would refuse this config (e.g. a DomainBed hyperparameter fishr-tune lacks), or None."""
    from fishr_tune.training import make_config

    try:
        make_config(best.config, best.file_name())
    except ConfigError as error:
        return str(error)
    return None


def write_best_configs(bests: Sequence[BestConfig], path: str | Path) -> list[Path]:
    """One selected group: `path` itself; several: one best_<algorithm>_te<k>_ts<s>.yaml each next to `path`.

    Returns the files in the order of `bests`. Several datasets put the dataset in the names, so no group's
    file overwrites another's.
    """
    path = Path(path)
    if not bests:
        raise ConfigError("--best-config: no group was selected, so there is no configuration to write")
    with_dataset = len({best.dataset for best in bests}) > 1
    targets = [path] if len(bests) == 1 else [path.parent / best.file_name(with_dataset) for best in bests]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for best, target in zip(bests, targets):
            target.write_text(best.yaml_text(), encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"--best-config: cannot write {error.filename or path} ({error.strerror or error})") from None
    return targets


# --- plots -------------------------------------------------------------------------------------------------------


def run_points(prepared: pd.DataFrame) -> pd.DataFrame:
    """Per run with one test env: its best training-domain validation checkpoint (val_acc, test_acc) and its config."""
    scores = training_domain_scores(prepared)
    if scores.empty:
        return scores
    ordered = scores.sort_values([RUN, "val_acc", "step"], ascending=[True, False, True], kind="mergesort")
    return ordered.drop_duplicates(RUN).reset_index(drop=True)


def _env_label(dataset: str, env: int) -> str:
    from fishr_tune.data import DATASET_ENVIRONMENTS

    names = DATASET_ENVIRONMENTS.get(dataset, ())
    return f"{names[env]} (env {env})" if env < len(names) else f"env {env}"


def hparam_distributions(prepared: pd.DataFrame, spaces: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, dict[str, str]]:
    """Per algorithm: each hyperparameter's search distribution kind, from the sweep's space when known, else the registry's."""
    from fishr_tune.hparams import hparam_space

    out: dict[str, dict[str, str]] = {}
    for (dataset, algorithm), _ in prepared.groupby(["dataset", "algorithm"], sort=True):
        try:
            registry = {name: spec.dist.kind for name, spec in hparam_space(str(algorithm), str(dataset)).items()}
        except (ConfigError, KeyError, ValueError, AttributeError):
            registry = {}
        out[str(algorithm)] = {**registry, **dict((spaces or {}).get(str(algorithm), {}))}
    return out


def make_plots(prepared: pd.DataFrame, directory: str | Path,
               spaces: Mapping[str, Mapping[str, str]] | None = None) -> list[Path]:
    """Per group: validation vs test accuracy over every run's checkpoints, the training_domain selection marked;
    per (dataset, algorithm): accuracy against each varying hyperparameter, validation and test in separate rows."""
    from fishr_tune import plots

    directory = Path(directory)
    scores = training_domain_scores(prepared)
    points = run_points(prepared)
    written: list[Path] = []
    if points.empty:
        return written
    chosen = select(prepared, "training_domain")
    chosen_at = {tuple(r[c] for c in GROUP): (str(r[RUN]), int(r["step"])) for r in chosen.to_dict("records")}
    for group, part in scores.groupby(GROUP, sort=True):
        dataset, algorithm, test_env, trial_seed = group
        ordered = part.sort_values([RUN, "step"], kind="mergesort")
        curves = {str(run): list(zip(rows["step"].astype(int), rows["val_acc"].astype(float), rows["test_acc"].astype(float)))
                  for run, rows in ordered.groupby(RUN, sort=True)}
        training = sorted(set(range(env_count(part))) - {int(test_env)})
        val_label = "validation: mean out-split accuracy of " + ", ".join(_env_label(str(dataset), e) for e in training)
        name = f"val_vs_test_{dataset}_{algorithm}_te{test_env}_ts{trial_seed}.png"
        written.append(plots.validation_vs_test(
            curves, chosen_at.get(tuple(group)),
            f"{dataset} {algorithm}, test env {_env_label(str(dataset), int(test_env))}, trial seed {trial_seed}: "
            f"{len(curves)} runs over their checkpoints", val_label,
            f"test: {_env_label(str(dataset), int(test_env))}, in split", directory / name,
        ))
    varying = varying_hparams(prepared)
    distributions = hparam_distributions(prepared, spaces)
    selected_runs = {run for run, _ in chosen_at.values()}
    for (dataset, algorithm), part in points.groupby(["dataset", "algorithm"], sort=True):
        names = varying.get((str(dataset), str(algorithm)), [])
        if not names:
            continue
        configs = [json.loads(c) for c in part["config"]]
        values = {n: [c.get(n) for c in configs] for n in names}
        tests = ", ".join(_env_label(str(dataset), int(e)) for e in sorted(part["test_env"].unique()))
        written.append(plots.accuracy_vs_hparams(
            values, part["val_acc"].to_numpy(), part["test_acc"].to_numpy(),
            f"{dataset} {algorithm}: each run at its best training-domain validation checkpoint (test env {tests})",
            directory / f"hparams_{dataset}_{algorithm}.png", distributions.get(str(algorithm), {}),
            [str(run) in selected_runs for run in part[RUN]],
            "training-domain validation", f"test ({tests})",
        ))
    return written


def log_selected_models(sweep: MlflowSweep, prepared: pd.DataFrame, bests: Sequence[BestConfig]) -> list[Any]:
    """Each selected checkpoint as an MLflow model on its trial run (fishr_tune.model_export), checked against the
    accuracies MLflow recorded at that step."""
    from fishr_tune.model_export import log_selected_model

    if MLFLOW_RUN_ID not in prepared.columns:
        raise ConfigError("--log-model: needs an MLflow source (--experiment), where each selected run has a trial run")
    logged = []
    for best in bests:
        problem = best.reproduction_problem()
        if problem:
            raise ConfigError(f"--log-model: {problem}")
        rows = prepared[(prepared[RUN] == best.run) & (prepared["step"] == best.step)]
        row = rows.iloc[0]
        expected = {c: float(row[c]) for c in rows.columns if str(c).startswith("env") and str(c).endswith("_acc")
                    and not _missing(row[c])}
        logged.append(log_selected_model(sweep.tracking_uri, str(row[MLFLOW_RUN_ID]), best.config, best.step, expected))
    return logged


def log_plots_to_mlflow(sweep: MlflowSweep, paths: Sequence[Path]) -> None:
    """The plots as artifacts of the sweep's parent run (under analyze/)."""
    if sweep.parent_run_id is None or not paths:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep.tracking_uri)
    for path in paths:
        client.log_artifact(sweep.parent_run_id, str(path), "analyze")
