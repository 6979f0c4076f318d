"""The `fishr-tune` command: parses, calls the modules, formats output. No logic of its own."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from fishr_tune.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


def exits_2_on_bad_input(command: F) -> F:
    """Bad input is one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConfigError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def parse_env_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise ConfigError(f"--test-envs: expected comma-separated environment indices like '2' or '0,1', got {text!r}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="fishr-tune")
def main() -> None:
    """Train Fishr and DomainBed baselines, search their hyperparameters on Ray Tune, select models."""


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of the settings below; flags override it.")
@click.option("--dataset", help="ColoredMNIST-IRM (default), ColoredMNIST or RotatedMNIST.")
@click.option("--algorithm", help="A registered algorithm: ERM (default), Fishr, IRM, VREx, ...")
@click.option("--test-envs", help="Comma-separated held-out environment indices (default: 2).")
@click.option("--hparams", "hparams_json", help='JSON object overriding hyperparameters, e.g. \'{"lambda": 1000}\'.')
@click.option("--hparams-seed", type=int, help="0 (default): the registry's defaults; N>0: a random configuration.")
@click.option("--trial-seed", type=int, help="Seeds the data and the in/out splits (default 0).")
@click.option("--seed", type=int, help="Seeds initialization and minibatch sampling (default 0).")
@click.option("--steps", type=int, help="Optimizer steps (default: the dataset's, 5001 for MNIST datasets).")
@click.option("--checkpoint-freq", type=int, help="Evaluate and record every N steps (default: 100 for MNIST datasets).")
@click.option("--holdout-fraction", type=float, help="Share of each environment held out as its `out` split (default 0.2).")
@click.option("--label-noise", type=float, help="Colored MNIST label-flip probability (default 0.25).")
@click.option("--data-dir", help="Directory with MNIST/raw (torchvision layout). Default: $FISHR_TUNE_DATA, else the embedded 5,000 digits.")
@click.option("--download", is_flag=True, default=None, help="Download MNIST into --data-dir (needs internet).")
@click.option("--output-dir", help="Where results.jsonl, checkpoint.pt and config.yaml go (default: runs/<dataset>_<algorithm>_...).")
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True, help="Continue the run already in --output-dir from its last checkpoint.")
@exits_2_on_bad_input
def train(config_file: str | None, hparams_json: str | None, test_envs: str | None, resume: bool, **flags: Any) -> None:
    """Train one configuration under the DomainBed protocol, printing per-domain accuracies at every checkpoint."""
    from fishr_tune.hparams import parse_hparams_json
    from fishr_tune.training import load_config_file, make_config, run_training

    values: dict[str, Any] = load_config_file(config_file) if config_file else {}
    where = config_file or "command line"
    if test_envs is not None:
        values["test_envs"] = parse_env_list(test_envs)
    if hparams_json is not None:
        values["hparams"] = {**values.get("hparams", {}), **parse_hparams_json(hparams_json)}
    values.update({k: v for k, v in flags.items() if v is not None})
    config = make_config(values, where)
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


if __name__ == "__main__":
    main()
