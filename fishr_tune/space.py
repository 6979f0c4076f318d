"""The search-space types: a distribution (sampled DomainBed style or handed to Optuna), a hyperparameter's valid
domain, and a hyperparameter (default, distribution, domain). A leaf that imports nothing of ours but errors (and
files, lazily, for a path's checks), so the algorithms can declare their spaces with it while hparams.py, which looks
the algorithms up, stays above them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fishr_tune.errors import ConfigError, quote

# The datasets that get the small-image shared space (no image-only hyperparameters) and DANN's small discriminator.
SMALL_IMAGES = ("ColoredMNIST", "RotatedMNIST", "ColoredMNIST-IRM")

# Which featurizer each dataset uses (DomainBed picks by input shape; ColoredMNIST-IRM uses the IRM paper's MLP).
DEFAULT_FEATURIZER = {"ColoredMNIST-IRM": "mlp", "ColoredMNIST": "mnist_cnn", "RotatedMNIST": "mnist_cnn"}
FEATURIZERS = ("mlp", "mnist_cnn", "resnet18", "resnet50")

DistKind = Literal["fixed", "uniform", "loguniform", "int", "logint", "choice"]
SEARCH_KINDS = ("loguniform", "uniform", "int", "logint", "choice")  # what a sweep file may write, in its messages' order


@dataclass(frozen=True)
class Distribution:
    """A search distribution over the values [low, high] (or `choices`): sampled here DomainBed style by the
    registry, handed to Optuna by a sweep (`to_optuna`), checked at its `representatives` by both.

    The registry's log distributions keep their `exponents`, so a draw is ``base ** uniform(*exponents)`` exactly as
    DomainBed writes ``10**r.uniform(a, b)`` (bit-identical seeded draws); integer kinds truncate with ``int()``.
    """

    kind: DistKind
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()
    exponents: tuple[float, float] | None = None
    base: float = 10.0

    @property
    def integer(self) -> bool:
        return self.kind in ("int", "logint")

    @property
    def log(self) -> bool:
        return self.kind in ("loguniform", "logint")

    @property
    def bounds(self) -> tuple[float, float]:
        return self.low, self.high

    def sample(self, rng: np.random.RandomState, default: Any) -> Any:
        if self.kind == "fixed":
            return default
        if self.kind == "choice":
            value = rng.choice(self.choices)
            return value.item() if hasattr(value, "item") else value
        if self.exponents is not None:
            value = self.base ** rng.uniform(*self.exponents)
        elif self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return int(value) if self.integer else float(value)

    def representatives(self) -> list[Any]:
        """Values that must all be valid for the hyperparameter (its bounds or its choices)."""
        if self.kind == "choice":
            return list(self.choices)
        if self.integer:
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]

    def to_optuna(self) -> Any:
        """The optuna.distributions object (imported here only: the registry needs no Optuna)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(self.choices))
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        if self.kind == "fixed":
            raise ValueError("a fixed distribution has no Optuna counterpart: pass its value")
        return FloatDistribution(self.low, self.high, log=self.log)

    def describe(self) -> str:
        if self.kind in ("fixed", "choice"):
            return "fixed" if self.kind == "fixed" else f"choice{list(self.choices)}"
        kind = ("int " if self.integer else "") + ("loguniform" if self.log else "uniform")
        if self.exponents is not None:
            return f"{kind} {self.base:g}^U({self.exponents[0]:g}, {self.exponents[1]:g})"
        return f"{kind} U({self.low:g}, {self.high:g})"


def fixed() -> Distribution:
    return Distribution("fixed")


def uniform(low: float, high: float, integer: bool = False) -> Distribution:
    return Distribution("int" if integer else "uniform", low, high)


def loguniform(low_exp: float, high_exp: float, base: float = 10.0, integer: bool = False) -> Distribution:
    return Distribution("logint" if integer else "loguniform", base**low_exp, base**high_exp,
                        exponents=(low_exp, high_exp), base=base)


def choice(*options: Any) -> Distribution:
    return Distribution("choice", choices=tuple(options))


@dataclass(frozen=True)
class Domain:
    """The values a hyperparameter may take at all: an override, a sweep's fixed value or range, and the registry's
    own distribution must all lie inside (lr 0 trains nothing, batch_size 0 or 1e12 crashes, ema 5 diverges).

    A number's domain is an interval (finite values only); a switch's or a name's is the closed set `values`
    (compared with their type, so ``1`` is not ``True``); `text` admits a name or path (a weights file): one
    non-empty line that the OS can take as a path.
    """

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    values: tuple[Any, ...] = ()
    text: bool = False

    def __contains__(self, value: Any) -> bool:
        if self.values:
            return any(type(value) is type(v) and value == v for v in self.values)
        if self.text:
            from fishr_tune.files import path_problem

            return (isinstance(value, str) and value.strip() != "" and not any(c in value for c in "\0\n\r")
                    and path_problem(value) is None)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        if self.values:
            return f"one of {list(self.values)}"
        if self.text:
            return "a non-empty line usable as a path (names of at most 255 bytes)"
        low = f"{'>' if self.low_open else '>='} {self.low:g}" if self.low > -math.inf else ""
        high = f"{'<' if self.high_open else '<='} {self.high:g}" if self.high < math.inf else ""
        return " and ".join(p for p in (low, high) if p) or "a finite number"


def one_of(*values: Any) -> Domain:
    return Domain(values=tuple(values))


POSITIVE = Domain(0.0, low_open=True)
NON_NEGATIVE = Domain(0.0)
UNIT = Domain(0.0, 1.0)  # probabilities, dropout
UNIT_OPEN = Domain(0.0, 1.0, high_open=True)  # moving-average and momentum coefficients


def at_least(low: float, high: float = math.inf) -> Domain:
    return Domain(low, high)


BATCH_SIZE = at_least(1, 65536)  # per domain; beyond this no accelerator holds the batch
WIDTH = at_least(1, 65536)  # layer widths
MAX_STEPS = 10**9  # DomainBed trains 5,001 steps; a billion is a typo (or a YAML duplicate) and would never end
STEPS = at_least(0, MAX_STEPS)  # step counts (anneal iterations)
SWITCH = one_of(False, True)
TEXT = Domain(text=True)


@dataclass(frozen=True)
class HParam:
    default: Any
    dist: Distribution = field(default_factory=fixed)
    doc: str = ""
    domain: Domain | None = None  # every entry has one (tests/test_hparams.py); the default and the distribution lie inside

    def __post_init__(self) -> None:
        if self.domain is None:
            return
        points = [self.default, *self.dist.choices] if self.dist.kind in ("fixed", "choice") else [self.default, *self.dist.bounds]
        outside = [p for p in points if p not in self.domain]
        if outside:
            raise RuntimeError(f"registry: {self.dist.describe()} (default {self.default}) leaves {self.domain.describe()}")

    def check_domain(self, name: str, value: Any, where: str) -> None:
        if self.domain is not None and value not in self.domain:
            raise ConfigError(f"{where}: hyperparameter {quote(name)} must be {self.domain.describe()}, got {quote(value)}")

