"""The `fishr-tune` command: parses, calls the modules, formats output. No logic of its own."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from fishr_tune.errors import ConfigError, quote

F = TypeVar("F", bound=Callable[..., Any])


def exits_2_on_bad_input(command: F) -> F:
    """Bad input is one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConfigError as error:
            click.echo(f"Error: {one_line(str(error))}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


MAX_MESSAGE = 1000


def one_line(message: str) -> str:
    """The error as one line of bounded length, whatever a value or a library put into it."""
    text = " ".join(message.split())
    return text if len(text) <= MAX_MESSAGE else f"{text[:MAX_MESSAGE]}... ({len(text):,} characters)"


def parse_env_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise ConfigError(f"--test-envs: expected comma-separated environment indices like '2' or '0,1', got {quote(text)}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="fishr-tune")
def main() -> None:
    """Train Fishr and DomainBed baselines, search their hyperparameters on Ray Tune, select models."""


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of the settings below; flags override it.")
@click.option("--dataset", help="ColoredMNIST-IRM (default), ColoredMNIST, RotatedMNIST, VLCS, PACS, OfficeHome, TerraIncognita or DomainNet.")
@click.option("--algorithm", help="A registered algorithm: ERM (default), Fishr, IRM, VREx, CORAL, MMD, DANN, CDANN, Fish, IDGM, GroupDRO or Mixup.")
@click.option("--test-envs", help="Comma-separated held-out environment indices (default: 2).")
@click.option("--hparams", "hparams_json", help='JSON object overriding hyperparameters, e.g. \'{"lambda": 1000}\'.')
@click.option("--hparams-seed", type=int, help="0 (default): the registry's defaults; N>0: a random configuration.")
@click.option("--trial-seed", type=int, help="Seeds the data and the in/out splits (default 0).")
@click.option("--seed", type=int, help="Seeds initialization and minibatch sampling (default 0).")
@click.option("--steps", type=int, help="Optimizer steps (default: the dataset's, 5001 for MNIST datasets).")
@click.option("--checkpoint-freq", type=int, help="Evaluate and record every N steps (default: 100 for MNIST datasets).")
@click.option("--holdout-fraction", type=float, help="Share of each environment held out as its `out` split (default 0.2).")
@click.option("--label-noise", type=float, help="Colored MNIST label-flip probability (default 0.25).")
@click.option("--data-dir", help="Directory with MNIST/raw (torchvision layout) or DomainBed's image folders (PACS/, VLCS/, ...). Default: $FISHR_TUNE_DATA, else the embedded 5,000 digits.")
@click.option("--download", is_flag=True, default=None, help="Download the dataset into --data-dir (needs internet).")
@click.option("--output-dir", help="Where results.jsonl, checkpoint.pt and config.yaml go (default: runs/<dataset>_<algorithm>_...).")
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
@click.option("--num-workers", type=int, help="Image datasets: DataLoader worker processes (default: CPUs available less one, at most 8).")
@click.option("--resume", is_flag=True, help="Continue the run already in --output-dir from its last checkpoint.")
@exits_2_on_bad_input
def train(config_file: str | None, hparams_json: str | None, test_envs: str | None, resume: bool, **flags: Any) -> None:
    """Train one configuration under the DomainBed protocol, printing per-domain accuracies at every checkpoint."""
    from fishr_tune.hparams import parse_hparams_json
    from fishr_tune.training import load_config_file, make_config, run_training

    values: dict[str, Any] = load_config_file(config_file) if config_file else {}
    where = config_file or "command line"
    file_where = f"{config_file}: key 'hparams'"
    given = {k for k, v in flags.items() if v is not None} | ({"test_envs"} if test_envs is not None else set())
    if test_envs is not None:
        values["test_envs"] = parse_env_list(test_envs)
    values.update({k: v for k, v in flags.items() if v is not None})
    flag_hparams = parse_hparams_json(hparams_json) if hparams_json is not None else None
    file_hparams = values.get("hparams")
    if flag_hparams is None:
        config = make_config(values, where, hparams_where=file_where if file_hparams else "--hparams", flags=given)
    else:
        if file_hparams is not None:  # the file's own values first, so an error names the file (and `hparams: 5` its key)
            kept = {k: v for k, v in file_hparams.items() if k not in flag_hparams} if isinstance(file_hparams, dict) else file_hparams
            make_config({**values, "hparams": kept}, where, hparams_where=file_where, flags=given)
        values["hparams"] = {**(file_hparams or {}), **flag_hparams}
        config = make_config(values, where, flags=given)
    printer = RecordPrinter()

    def on_dataset(dataset: Any) -> None:
        click.echo(f"Data: {dataset.summary()}")
        click.echo(f"Hyperparameters: {json.dumps(config.resolved_hparams(), sort_keys=True)}")
        click.echo(f"Output: {config.output_dir or config.default_output_dir()}")

    from fishr_tune.training import NonFiniteLossError

    try:
        run_training(config, resume=resume, on_record=printer, on_dataset=on_dataset)
    except NonFiniteLossError as error:
        click.echo(f"Training diverged: {error}", err=True)
        sys.exit(1)


class RecordPrinter:
    """One fixed-width row per record; test environments are marked with '*'."""

    WIDTH = 10

    def __init__(self) -> None:
        self.columns: list[str] | None = None

    def __call__(self, record: dict[str, Any]) -> None:
        from fishr_tune.records import acc_key, env_indices

        if self.columns is None:
            test = set(record["args"]["test_envs"])
            envs = env_indices(record)
            self.columns = ["step", "epoch", "loss", "nll", "penalty"]
            self.columns += [acc_key(i, s) for i in envs for s in ("in", "out")]
            self.columns += ["val_acc", "step_time"]
            header = [c.replace("_acc", "") + ("*" if c.startswith("env") and int(c[3:].split("_")[0]) in test else "") for c in self.columns]
            click.echo("  ".join(h.ljust(self.WIDTH) for h in header))
        cells = []
        for column in self.columns:
            value = record.get(column, "")
            if isinstance(value, float):
                cells.append(f"{value:.6f}"[: self.WIDTH].ljust(self.WIDTH))
            else:
                cells.append(str(value).ljust(self.WIDTH))
        click.echo("  ".join(cells))


@main.command("inspect")
@click.argument("run_dir", type=click.Path())
@click.option("--epsilon", type=float, default=0.01, show_default=True, help="eps of the score: A's risk may rise by at most eps.")
@click.option("--damping", type=float, default=1e-3, show_default=True, help="H_A + delta I with delta = damping * lambda_max(H_A): bounds the flat directions.")
@click.option("--method", type=click.Choice(["auto", "dense", "lanczos"]), default="auto", show_default=True, help="Exact dense Hessians (auto: heads up to 4,096 parameters) or Lanczos on Hessian-vector products.")
@click.option("--data-dir", help="Where the run's data is, if not where config.yaml says.")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True)
@exits_2_on_bad_input
def inspect_command(run_dir: str, epsilon: float, damping: float, method: str, data_dir: str | None, output_format: str) -> None:
    """Inconsistency score of a trained run (a `fishr-tune train` output dir) on its training environments.

    I^eps = max over ordered pairs (A, B) of R_B - R_A + max_{1/2 t'H_A t <= eps} 1/2 t'H_B t, on the classifier head
    at the run's checkpoint: per-domain risks, both terms per pair, the score (exact, and with Fishr's diagonal
    gradient variances in place of the Hessians) and Fishr's gradient-variance penalty.
    """
    from fishr_tune import inspection

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


@main.group()
def reproduce() -> None:
    """Reproduce published results with the original scripts' protocols."""


@reproduce.command("colored-mnist-irm")
@click.option("--algorithms", default="ERM,IRM,VREx,Fishr,ERM-grayscale", show_default=True, help="Comma-separated: ERM, IRM, VREx, Fishr, the Table 6 variants Fishr-notcentered, Fishr-offdiagonal, and ERM-grayscale (IRM's Table 1 oracle: colour removed).")
@click.option("--restarts", type=int, default=10, show_default=True, help="Restarts per algorithm (the paper: 10).")
@click.option("--data-dir", help="Directory with MNIST/raw (torchvision layout). Default: $FISHR_TUNE_DATA, else the embedded 5,000 digits.")
@click.option("--steps", type=int, default=501, show_default=True, help="Full-batch optimizer steps.")
@click.option("--label-noise", type=float, default=0.25, show_default=True, help="Label-flip probability (0 is the paper's Table 5 setting).")
@click.option("--seed", type=int, default=0, show_default=True, help="Restart r uses seed*1000+r for its data and initialization.")
@click.option("--address", help="Ray cluster address (e.g. 'auto' or ray://host:10001). Default: a local Ray.")
@click.option("--cpus-per-restart", type=float, help="CPUs each Ray task asks for, also its torch threads (default 1).")
@click.option("--no-ray", is_flag=True, help="Run the restarts sequentially in this process.")
@click.option("--output", "output_file", type=click.Path(dir_okay=False), help="Write per-restart results and the summary as JSON.")
@click.option("--format", "output_format", type=click.Choice(["table", "markdown", "json"]), default="table", show_default=True)
@click.option("--inconsistency", "with_inconsistency", is_flag=True, help="Also compute each final model's inconsistency score on the training environments (a second table).")
@click.option("--epsilon", type=float, default=0.01, show_default=True, help="The score's eps (with --inconsistency).")
@exits_2_on_bad_input
def reproduce_colored_mnist_irm(algorithms: str, restarts: int, data_dir: str | None, steps: int, label_noise: float,
                                seed: int, address: str | None, cpus_per_restart: float | None, no_ray: bool,
                                output_file: str | None, output_format: str, with_inconsistency: bool,
                                epsilon: float) -> None:
    """The Fishr paper's Table 2 (Colored MNIST, IRM setup): train / test / gray test accuracy, ours beside the paper's."""
    from pathlib import Path

    from fishr_tune import reproduce as rep

    names = rep.parse_algorithms(algorithms)
    if output_file:
        from fishr_tune.files import check_can_create

        check_can_create(output_file, "--output")
    config = rep.ScriptConfig(steps=steps, label_noise=label_noise,
                              inconsistency_epsilon=epsilon if with_inconsistency else None)
    config.check()
    say = functools.partial(click.echo, err=output_format == "json")

    def on_dataset(dataset: Any) -> None:
        say(f"Data (restart 0): {dataset.summary()}")
        say(f"Running {len(names)} algorithm(s) x {restarts} restart(s), {steps} full-batch steps, label noise {label_noise:g}")

    def save(reproduction: Any) -> None:
        if output_file:
            Path(output_file).parent.mkdir(parents=True, exist_ok=True)
            Path(output_file).write_text(json.dumps(reproduction.to_json(), indent=2))

    def on_result(result: Any, done: int, total: int, reproduction: Any) -> None:
        save(reproduction)
        score = f" inconsistency {result.inconsistency['inconsistency']:.4g}" if result.inconsistency else ""
        say(f"[{done}/{total}] {result.algorithm} restart {result.restart} (seed {result.seed}): train {100 * result.train_acc:.1f} "
            f"test {100 * result.test_acc:.1f} gray test {100 * result.gray_test_acc:.1f}{score} ({result.wall_s:.0f} s)")

    reproduction = rep.run_reproduction(
        names, restarts, config, seed=seed, data_dir=data_dir, use_ray=not no_ray, address=address,
        cpus_per_restart=cpus_per_restart, on_dataset=on_dataset, on_result=on_result,
        on_progress=functools.partial(click.echo, err=output_format == "json"),
    )
    save(reproduction)
    if output_file:
        say(f"Results: {output_file}")
    say(f"Wall time: {reproduction.wall_s:.0f} s ({reproduction.executor})")
    if output_format == "json":
        click.echo(json.dumps(reproduction.to_json(), indent=2))
    else:
        click.echo(rep.FORMATS[output_format](reproduction))


@reproduce.command("fish-linear")
@click.option("--methods", default="ERM,IDGM,Fish,Fishr", show_default=True, help="Comma-separated: ERM, IDGM, Fish, Fishr.")
@click.option("--steps", type=int, default=100, show_default=True, help="Full-batch Adam steps (the accuracies depend on it: see BENCHMARKS.md).")
@click.option("--lr", type=float, default=0.01, show_default=True, help="Adam learning rate (every method).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the algorithms' random draws (the data is fixed).")
@click.option("--n-per-domain", type=int, default=1000, show_default=True, help="Inputs per domain (a multiple of 100).")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True)
@exits_2_on_bad_input
def reproduce_fish_linear(methods: str, steps: int, lr: float, seed: int, n_per_domain: int, output_format: str) -> None:
    """Shi et al. 2021's linear dataset (Figure 2 / Table 1): train/test accuracy and learned W, b beside the paper's."""
    from fishr_tune import fish_linear as fl

    names = fl.parse_methods(methods)
    settings = fl.Settings(steps=steps, lr=lr, seed=seed, n_per_domain=n_per_domain)
    settings.check()
    fl.build_domains(n_per_domain)  # bad sizes fail here, before any training
    results = fl.run(names, settings)
    if output_format == "json":
        click.echo(json.dumps(fl.to_json(results), indent=2))
    else:
        click.echo(fl.format_table(results, settings))


@main.command()
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.option("--num-samples", type=int, help="Configurations per group (overrides search.num_samples).")
@click.option("--steps", type=int, help="Optimizer steps per trial (overrides steps).")
@click.option("--name", help="Sweep name = experiment directory under the storage path (overrides name).")
@click.option("--storage-path", help="Where the experiment directory goes (overrides storage_path).")
@click.option("--tracking-uri", help="MLflow tracking URI (overrides tracking_uri).")
@click.option("--address", help="Ray cluster to join, e.g. 'auto' or 'host:6379'. Default: a local Ray on this machine.")
@click.option("--num-cpus", type=int, help="CPUs of the local Ray (default: all of this machine's). Ignored with --address.")
@click.option("--resume", is_flag=True, help="Continue the interrupted sweep in <storage path>/<name>; finished trials are not rerun.")
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


@main.group()
def data() -> None:
    """Image datasets in DomainBed's folders: download them (online) and check a data directory."""


@data.command("download")
@click.argument("name")
@click.option("--data-dir", required=True, help="Where the dataset folder goes (DATA_DIR/<dataset folder>/...).")
@click.option("--keep-archives", is_flag=True, help="Keep the downloaded archives next to the data.")
@exits_2_on_bad_input
def data_download(name: str, data_dir: str, keep_archives: bool) -> None:
    """Fetch, verify, unpack and count one of VLCS, PACS, OfficeHome, TerraIncognita, DomainNet (needs internet)."""
    from pathlib import Path

    from fishr_tune.data.download import check_data_dir, download_dataset

    Path(data_dir).expanduser().mkdir(parents=True, exist_ok=True)
    folder = download_dataset(name, data_dir, keep_archives=keep_archives)
    click.echo(f"{name}: unpacked into {folder}")
    print_data_reports(check_data_dir(data_dir, [name]))


@data.command("check")
@click.option("--data-dir", required=True, help="The directory holding DomainBed's dataset folders (VLCS/, PACS/, ...).")
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


@main.command("mlflow-sync")
@click.argument("experiment_dir", type=click.Path(file_okay=False))
@click.option("--tracking-uri", help="Send to this tracking URI instead of the sweep's own (e.g. after the server moved).")
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


@main.command(help=ANALYZE_HELP)
@click.option("--experiment", help="MLflow experiment = the sweep's name.")
@click.option("--tracking-uri", default="sqlite:///mlflow.db", show_default=True, help="MLflow store to read --experiment from.")
@click.option("--records", "records_path", help="Ray results dir, parquet export, or dir of results.jsonl files.")
@click.option("--selection", "selection_name", help="training_domain, leave_one_out or oracle (default: all three).")
@click.option("--format", "output_format", default="table", show_default=True, help="table (Rich), markdown, latex or json.")
@click.option("--algorithm", help="Only this algorithm.")
@click.option("--test-env", type=int, help="Only groups with this test environment index.")
@click.option("--trial-seed", type=int, help="Only this trial seed.")
@click.option("--best-config", "best_config", type=click.Path(dir_okay=False), help="Write the selected run's TrainConfig YAML here.")
@click.option("--export", "export_path", type=click.Path(dir_okay=False), help="Write the long records table as parquet.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), help="Write PNG plots into this directory.")
@click.option("--log-model", "log_model", is_flag=True,
              help="Log each group's selected checkpoint as an MLflow model on its trial run (MLflow source only).")
@click.option("--inconsistency", "with_inconsistency", is_flag=True, help="Add each selected model's inconsistency score (needs its checkpoint at the selected step: `fishr-tune train` dirs under --records).")
@click.option("--epsilon", type=float, default=0.01, show_default=True, help="The score's eps (with --inconsistency).")
@exits_2_on_bad_input
def analyze(experiment: str | None, tracking_uri: str, records_path: str | None, selection_name: str | None,
            output_format: str, algorithm: str | None, test_env: int | None, trial_seed: int | None,
            best_config: str | None, export_path: str | None, plots_dir: str | None, log_model: bool = False,
            with_inconsistency: bool = False, epsilon: float = 0.01) -> None:
    from pathlib import Path

    from fishr_tune import analyze as an
    from fishr_tune import report
    from fishr_tune.selection import SELECTION_METHODS

    if output_format not in report.FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(report.FORMATS)}, got {quote(output_format)}")
    if selection_name is not None and selection_name not in SELECTION_METHODS:
        raise ConfigError(f"--selection: expected one of {', '.join(SELECTION_METHODS)}, got {quote(selection_name)}")
    if (experiment is None) == (records_path is None):
        raise ConfigError("give exactly one source: --experiment NAME (MLflow) or --records PATH")
    if log_model and experiment is None:
        raise ConfigError("--log-model: needs --experiment (the models go to the sweep's MLflow trial runs)")
    from fishr_tune.files import check_can_create

    for flag, target, is_dir in (("--best-config", best_config, False), ("--export", export_path, False), ("--plots", plots_dir, True)):
        if target:
            check_can_create(target, flag, directory=is_dir)
    methods = (selection_name,) if selection_name else SELECTION_METHODS
    if (best_config or log_model) and len(methods) != 1:
        methods_for_best = "training_domain"
    else:
        methods_for_best = methods[0]
    note = functools.partial(click.echo, err=True)
    sweep = None
    if experiment is not None:
        sweep = an.from_mlflow(tracking_uri, experiment, progress=_rich_progress)
        table = sweep.table
    else:
        table = an.gather_files(records_path)  # type: ignore[arg-type]
    if table.empty:
        raise ConfigError(f"no records in {'experiment ' + repr(experiment) if experiment else records_path}")
    if export_path:
        an.export_parquet(table, export_path)
        note(f"Records: {len(table):,} rows written to {export_path}")
    prepared = an.filter_groups(an.selection_table(table), algorithm=algorithm, test_env=test_env, trial_seed=trial_seed)
    if prepared.empty:
        raise ConfigError("no records left after --algorithm/--test-env/--trial-seed")
    selected = an.selections(prepared, methods)
    if test_env is not None:
        selected = {m: f[f["test_env"] == test_env] for m, f in selected.items()}
    summaries = an.summaries_of(selected)
    varying = an.varying_hparams(prepared)
    scores: dict[str, list[Any]] = {}
    if with_inconsistency:
        from fishr_tune.inspection import score_selected

        scores = {m: score_selected(f, records_path, epsilon) for m, f in selected.items()}
    if output_format == "json":
        results = an.results_json(summaries)
        if with_inconsistency:
            from dataclasses import asdict

            results["inconsistency"] = {m: [asdict(s) for s in found] for m, found in scores.items()}
        click.echo(json.dumps(results, sort_keys=True))
    elif output_format == "table":
        print_analysis(summaries, selected, varying)
    else:
        click.echo(report.render(summaries, output_format))
        click.echo()
        click.echo(report.render_selected(selected, output_format, varying))
    if with_inconsistency and output_format != "json":
        print_inconsistency(scores, epsilon)
    if best_config:
        if methods_for_best not in selected:
            selected.update(an.selections(prepared, (methods_for_best,)))
        bests = an.best_configs(prepared, selected[methods_for_best], methods_for_best)
        existed = Path(best_config).exists()
        written = an.write_best_configs(bests, best_config)
        for best, path in zip(bests, written):
            problem = an.check_best_config(best)
            if problem:
                note(f"Warning: {path}: fishr-tune train would refuse it: {problem}")
            if best.reproduction_problem():
                note(f"Warning: {path}: {best.reproduction_problem()}")
        if len(written) == 1:
            note(f"Best configuration ({methods_for_best}): {written[0]}")
        else:
            stale = f"; the {best_config} already there is from an earlier analysis" if existed else ""
            note(f"Best configurations ({methods_for_best}): {len(written)} groups selected, so {best_config} was not "
                 f"written{stale}; wrote {', '.join(str(p) for p in written)} (for one file at {best_config}, narrow to "
                 f"one group with --algorithm/--test-env/--trial-seed)")
    if log_model and sweep is not None:
        if methods_for_best not in selected:
            selected.update(an.selections(prepared, (methods_for_best,)))
        chosen = an.best_configs(prepared, selected[methods_for_best], methods_for_best)
        for logged in an.log_selected_models(sweep, prepared, chosen):
            note(f"Model ({methods_for_best}): step {logged.step} of run {logged.run_id} rebuilt (validation "
                 f"{100 * logged.val_acc:.2f}%, as recorded) and logged as {logged.model_uri}")
    if plots_dir:
        paths = an.make_plots(prepared, plots_dir, sweep.spaces if sweep is not None else None)
        if sweep is not None:
            an.log_plots_to_mlflow(sweep, paths)
        note(f"Plots: {len(paths)} PNG files in {plots_dir}" + (" (also logged to the sweep's parent run)" if sweep and sweep.parent_run_id else ""))


def print_inconsistency(scores: dict[str, list[Any]], epsilon: float) -> None:
    """One Rich table per selection method: the selected models' scores, or why there is none."""
    from rich.console import Console
    from rich.table import Table

    from fishr_tune import report

    console = Console(width=max(120, Console().width))
    for method, found in scores.items():
        table = Table(title=f"Inconsistency I^eps (eps {epsilon:g}) of the models selected by {report.SELECTION_TITLES[method]}")
        for column in ("Dataset", "Algorithm", "Test env", "Trial seed", "Run", "Step", "I^eps", "I^eps diagonal", "Note"):
            table.add_column(column)
        for s in found:
            group = s.selected
            table.add_row(group["dataset"], group["algorithm"], str(group["test_env"]), str(group["trial_seed"]),
                          group["run"], str(group["step"]),
                          "X" if s.inconsistency is None else f"{s.inconsistency:.5f}",
                          "X" if s.inconsistency_diagonal is None else f"{s.inconsistency_diagonal:.5f}", s.note)
        console.print(table)


def _rich_progress(items: Any, total: int, description: str) -> Any:
    """A Rich progress bar on stderr while MLflow runs are read (their metric histories are one request each)."""
    from rich.console import Console
    from rich.progress import track

    return track(items, total=total, description=description, console=Console(stderr=True), transient=True)


def print_analysis(summaries: Any, selected: Any, varying: Any) -> None:
    """Rich tables: results per method and dataset, then the selected run and hyperparameters per group."""
    from rich.console import Console
    from rich.table import Table

    from fishr_tune import report

    console = Console(width=max(120, Console().width))
    for method, summary in summaries.items():
        title = report.SELECTION_TITLES[method]
        if summary.empty:
            console.print(f"Model selection: {title}: no group has the runs this method needs")
            continue
        for dataset in sorted(summary["dataset"].unique()):
            header, rows = report.result_grid(summary, dataset)
            table = Table(title=f"{dataset}: {title} (test accuracy %, mean ± s.e. over trial seeds)")
            for i, column in enumerate(header):
                table.add_column(column, justify="left" if i == 0 else "right")
            for row in rows:
                table.add_row(*row)
            console.print(table)
            chosen = Table(title=f"{dataset}: selected by {title}")
            for i, column in enumerate(report.SELECTED_HEADER):
                chosen.add_column(column, justify="right" if 2 <= i <= 6 else "left")
            for row in report.selected_hparams_table(selected[method], dataset, varying):
                chosen.add_row(*row)
            console.print(chosen)


if __name__ == "__main__":
    main()
