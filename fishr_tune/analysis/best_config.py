"""The selected run of each group as a `fishr-tune train --config` file: its args and fully resolved hyperparameters."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fishr_tune import records
from fishr_tune.analysis.table import RUN, is_missing, plain_value
from fishr_tune.domainbed_names import to_our_names
from fishr_tune.errors import ConfigError

TRAIN_CONFIG_ARGS = ("seed", "steps", "checkpoint_freq", "holdout_fraction", "label_noise", "data_dir")
# Args whose TrainConfig default would silently change the rerun's accuracies when a record lacks them.
REPRODUCING_ARGS = ("seed", "holdout_fraction")


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
        names = ", ".join(records.arg_column(name) for name in self.unknown)
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
    hparam_columns = [c for c in prepared.columns if str(c).startswith(records.HPARAM_PREFIX)]
    first = prepared.drop_duplicates(RUN).set_index(RUN)
    found = []
    for row in selected.to_dict("records"):
        run = first.loc[row[RUN]]
        hparams = {c[len(records.HPARAM_PREFIX):]: plain_value(run[c]) for c in hparam_columns if not is_missing(plain_value(run[c]))}
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
            value: Any = plain_value(run.get(records.arg_column(name))) if records.arg_column(name) in run.index else None
            if name == "steps":
                value = int(run["steps"])
            if not is_missing(value):
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
