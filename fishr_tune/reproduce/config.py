"""The reproduction's settings: the papers' numbers it is compared against, the official script's hyperparameters,
and the parsing of the algorithm list."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fishr_tune.errors import ConfigError, quote, unknown_name_error
from fishr_tune.inconsistency import check_epsilon

DATASET_NAME = "ColoredMNIST-IRM"


TRAIN_ENVS = (0, 1)


TEST_ENV = 2


GRAY_TEST_ENV = 3


PAPER_LABEL_NOISE = 0.25


PAPER_STEPS = 501


# Table 2 of the Fishr paper (10 restarts): accuracy in percent, (mean, std).
PAPER_TABLE2: dict[str, dict[str, tuple[float, float]]] = {
    "ERM": {"train_acc": (86.4, 0.2), "test_acc": (14.0, 0.7), "gray_test_acc": (71.0, 0.7)},
    "IRM": {"train_acc": (71.0, 0.5), "test_acc": (65.6, 1.8), "gray_test_acc": (66.1, 0.2)},
    "VREx": {"train_acc": (71.7, 1.5), "test_acc": (67.2, 1.5), "gray_test_acc": (68.6, 2.2)},
    "Fishr": {"train_acc": (71.0, 0.9), "test_acc": (69.5, 1.0), "gray_test_acc": (70.2, 1.1)},
}


# Table 6 variants: name -> (centered, full_covariance) of the gradient statistics they match.
FISHR_VARIANTS: dict[str, tuple[bool, bool]] = {
    "Fishr": (True, False),
    "Fishr-notcentered": (False, False),
    "Fishr-offdiagonal": (True, True),
}


GRAYSCALE_ORACLE = "ERM-grayscale"


# Table 1 of the IRM paper (Arjovsky et al. 2019): the grayscale ERM oracle row and the hypothetical optimum.
IRM_TABLE1: dict[str, dict[str, tuple[float, float]]] = {
    GRAYSCALE_ORACLE: {"train_acc": (73.5, 0.2), "test_acc": (73.0, 0.4)},
}


OPTIMAL_INVARIANT_PERCENT: dict[str, float] = {"train_acc": 75.0, "test_acc": 75.0}


REPRODUCIBLE_ALGORITHMS: tuple[str, ...] = (
    *PAPER_TABLE2, *(name for name in FISHR_VARIANTS if name not in PAPER_TABLE2), GRAYSCALE_ORACLE,
)


DEFAULT_ALGORITHMS: tuple[str, ...] = (*PAPER_TABLE2, GRAYSCALE_ORACLE)


UNPENALIZED: tuple[str, ...] = ("ERM", GRAYSCALE_ORACLE)


METRICS: tuple[str, ...] = ("train_acc", "test_acc", "gray_test_acc")


OnProgress = Callable[[str], None]


@dataclass(frozen=True)
class ScriptConfig:
    """The official script's settings; defaults are the IRM repo's tuned values that the Fishr paper reuses."""

    steps: int = PAPER_STEPS
    label_noise: float = PAPER_LABEL_NOISE
    hidden_dim: int = 390
    lr: float = 0.0004898536566546834
    l2_regularizer_weight: float = 0.00110794568
    penalty_anneal_iters: int = 190
    penalty_weight: float = 91257.18613115903
    log_every: int = 100
    # Not the script's: the inconsistency score of the final model on the training environments (None: off).
    inconsistency_epsilon: float | None = None

    def check(self) -> None:
        if self.inconsistency_epsilon is not None:
            check_epsilon(self.inconsistency_epsilon)
        if self.steps < 1:
            raise ConfigError(f"--steps: expected a positive number of steps, got {self.steps}")
        if not 0.0 <= self.label_noise <= 1.0:
            raise ConfigError(f"--label-noise: expected a probability in [0, 1], got {self.label_noise}")

    def matches_paper(self) -> bool:
        return self.steps == PAPER_STEPS and self.label_noise == PAPER_LABEL_NOISE


def parse_name_list(text: str, valid: Sequence[str], kind: str = "algorithm") -> list[str]:
    """Comma-separated names, matched case-insensitively to `valid` (in the order given, once each)."""
    by_lower = {name.lower(): name for name in valid}
    names: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.lower() not in by_lower:
            raise unknown_name_error(kind, part, valid)
        if by_lower[part.lower()] not in names:
            names.append(by_lower[part.lower()])
    if not names:
        raise ConfigError(f"--{kind}s: expected a comma-separated list from {', '.join(valid)}, got {quote(text)}")
    return names


def parse_algorithms(text: str) -> list[str]:
    """Comma-separated names, matched case-insensitively to REPRODUCIBLE_ALGORITHMS (in the order given)."""
    return parse_name_list(text, REPRODUCIBLE_ALGORITHMS)


def restart_seed(seed: int, restart: int) -> int:
    """Seed of restart `restart`: it seeds that restart's data and its model initialization, for every algorithm."""
    return seed * 1000 + restart
