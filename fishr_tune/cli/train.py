"""`fishr-tune train`: one configuration, its records printed as rows while it trains."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from fishr_tune.cli.common import RegistryHelpOption, exits_2_on_bad_input, listing


def _datasets() -> str:
    from fishr_tune.data import DATASET_ENVIRONMENTS
    from fishr_tune.training.config import TrainConfig

    return listing(list(DATASET_ENVIRONMENTS), TrainConfig.model_fields["dataset"].default)


def _algorithms() -> str:
    from fishr_tune.algorithms import ALGORITHMS
    from fishr_tune.training.config import TrainConfig

    return listing(list(ALGORITHMS), TrainConfig.model_fields["algorithm"].default)

@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML file of the settings below; flags override it.")
@click.option("--dataset", cls=RegistryHelpOption, help_from=lambda: f"{_datasets()}.")
@click.option("--algorithm", cls=RegistryHelpOption, help_from=lambda: f"A registered algorithm: {_algorithms()}.")
@click.option("--test-envs", help="Comma-separated held-out environment indices (default: 2).")
@click.option("--hparams", "hparams_json", help='JSON object overriding hyperparameters, e.g. \'{"lambda": 1000}\'.')
@click.option("--hparams-seed", type=int, help="0 (default): the registry's defaults; N>0: a random configuration.")
@click.option("--trial-seed", type=int, help="Seeds the data and the in/out splits (default 0).")
@click.option("--seed", type=int, help="Seeds initialization and minibatch sampling (default 0).")
@click.option("--steps", type=int, help="Optimizer steps (default: the dataset's, 5001 for MNIST datasets).")
@click.option("--checkpoint-freq", type=int,
              help="Evaluate and record every N steps (default: 100 for MNIST datasets).")
@click.option("--holdout-fraction", type=float,
              help="Share of each environment held out as its `out` split (default 0.2).")
@click.option("--label-noise", type=float, help="Colored MNIST label-flip probability (default 0.25).")
@click.option("--data-dir",
              help="Directory with MNIST/raw (torchvision layout) or DomainBed's image folders (PACS/, VLCS/, ...). "
                   "Default: $FISHR_TUNE_DATA, else the embedded 5,000 digits.")
@click.option("--download", is_flag=True, default=None, help="Download the dataset into --data-dir (needs internet).")
@click.option("--output-dir",
              help="Where results.jsonl, checkpoint.pt and config.yaml go (default: runs/<dataset>_<algorithm>_...).")
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
@click.option("--num-workers", type=int,
              help="Image datasets: DataLoader worker processes (default: CPUs available less one, at most 8).")
@click.option("--resume", is_flag=True, help="Continue the run already in --output-dir from its last checkpoint.")
@exits_2_on_bad_input
def train(config_file: str | None, hparams_json: str | None, test_envs: str | None, resume: bool, **flags: Any) -> None:
    """Train one configuration under the DomainBed protocol, printing per-domain accuracies at every checkpoint."""
    from fishr_tune.training import NonFiniteLossError, run_training
    from fishr_tune.training.config import config_from_command

    config = config_from_command(config_file, flags, test_envs, hparams_json)
    printer = RecordPrinter()

    def on_dataset(dataset: Any) -> None:
        click.echo(f"Data: {dataset.summary()}")
        click.echo(f"Hyperparameters: {json.dumps(config.resolved_hparams(), sort_keys=True)}")
        click.echo(f"Output: {config.output_dir or config.default_output_dir()}")


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
            header = [c.replace("_acc", "") + ("*" if c.startswith("env") and int(c[3:].split("_")[0]) in test else "")
                      for c in self.columns]
            click.echo("  ".join(h.ljust(self.WIDTH) for h in header))
        cells = []
        for column in self.columns:
            value = record.get(column, "")
            if isinstance(value, float):
                cells.append(f"{value:.6f}"[: self.WIDTH].ljust(self.WIDTH))
            else:
                cells.append(str(value).ljust(self.WIDTH))
        click.echo("  ".join(cells))

