"""One trial's settings, typed: the group it belongs to, the TrialSpec that Tune carries as its config (what the
searcher chose), and the RunSettings every trial of the sweep shares. A leaf of the sweep package, so search,
trainable, tracking and analysis can all read it.

Tune's config must stay a plain dict: `to_config` / `from_config` convert at the boundary, with the keys sweeps
have always written (resume, MLflow params and analyze read them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GROUP_KEY = "group"  # in the config and in every result: routes a trial's events to its group
FAILURE_KEY = "failure"  # a trial's last result carries it when training diverged (NaN/inf loss)


def failed(result: Mapping[str, Any] | None) -> bool:
    return result is not None and bool(result.get(FAILURE_KEY))


@dataclass(frozen=True)
class Group:
    """DomainBed's unit of selection: one (dataset, algorithm, test_envs, trial_seed); search and stopping stay inside it."""

    dataset: str
    algorithm: str
    test_envs: tuple[int, ...]
    trial_seed: int

    @property
    def key(self) -> str:
        envs = "-".join(str(e) for e in self.test_envs)
        return f"{self.algorithm}/te{envs}/ts{self.trial_seed}"


@dataclass(frozen=True)
class TrialSpec:
    """One configuration of one group: `seed` drives initialization and minibatches, `sample_index` counts the
    group's suggestions (0, 1, ...)."""

    group: str
    dataset: str
    algorithm: str
    test_envs: tuple[int, ...]
    trial_seed: int
    seed: int
    hparams: Mapping[str, Any] = field(default_factory=dict)
    sample_index: int = 0

    @classmethod
    def of(cls, group: Group, sample_index: int, seed: int, hparams: Mapping[str, Any]) -> TrialSpec:
        return cls(group.key, group.dataset, group.algorithm, tuple(group.test_envs), group.trial_seed, seed,
                   dict(hparams), sample_index)

    def selection_group(self) -> Group:
        """The group this trial is selected in (its `group` field is that group's key)."""
        return Group(self.dataset, self.algorithm, self.test_envs, self.trial_seed)

    def to_config(self) -> dict[str, Any]:
        return {
            GROUP_KEY: self.group,
            "dataset": self.dataset,
            "algorithm": self.algorithm,
            "test_envs": list(self.test_envs),
            "trial_seed": self.trial_seed,
            "sample_index": self.sample_index,
            "seed": self.seed,
            "hparams": dict(self.hparams),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrialSpec:
        return cls(
            group=str(config.get(GROUP_KEY, "")),
            dataset=str(config["dataset"]),
            algorithm=str(config["algorithm"]),
            test_envs=tuple(int(e) for e in config["test_envs"]),
            trial_seed=int(config["trial_seed"]),
            seed=int(config["seed"]),
            hparams=dict(config["hparams"]),
            sample_index=int(config.get("sample_index", 0)),
        )


@dataclass(frozen=True)
class RunSettings:
    """What every trial of a sweep shares (handed to each trainable once, through tune.with_parameters).

    `device` is "auto" when trials reserve a GPU: a trial then trains on it, and also runs where a GPU is only
    declared (Ray's fake multi-node clusters in the tests) instead of failing there.
    """

    steps: int
    checkpoint_freq: int
    holdout_fraction: float
    label_noise: float | None = None
    device: str = "cpu"
    cpus_per_trial: float = 1
    system_metrics: bool = False
    inconsistency_epsilon: float | None = None
