"""The linear dataset of Shi et al. 2021 ("Gradient Matching for Domain Generalization", Sec. 3, Figure 2 and
Table 1), as the lecture in ``references/004_*.txt`` shows it: where ERM picks up a domain-specific feature and
inter-domain gradient matching does not.

Every domain holds three kinds of 4-dimensional binary inputs (Figure 2's caption):

- x1 = [0, 0, 0, 0], label 0: 50% of each domain;
- x2, label 1 always: 40% of each domain; it "changes for each domain";
- x3 = [1, 0, 0, 0]: 10% of each domain, of which 30% have label 1 and 70% label 0.

How x2 changes is read off Table 1: x2 of domain d is [1, e_d] (the shared first coordinate plus a one-hot of
the domain), with two training domains ([1, 1, 0, 0], [1, 0, 1, 0]) and a test domain ([1, 0, 0, 1]). ERM's
W = [2.8, 3.3, 3.3, 0.0] has weight on exactly the two training domains' coordinates and none on the fourth,
which no training input has; IDGM's 93% test accuracy needs the test domain's x2 to share the first coordinate,
the only feature the model can carry over. Predicting from that coordinate alone gives 50 + 40 + 3 = 93% on
every domain; ERM's 97% train and 57% test are 50 + 40 + 7 and 50 + 0 + 7: x2 and x3 told apart by the
domain-specific coordinate, then the test domain's x2 classified as x3.

The methods are the registry's algorithms (DomainBed's interface) on a linear model: the MLP featurizer with no
hidden layer is a flatten, the head a 2-class ``nn.Linear`` started at zero; W and b reported are the logit
difference (class 1 minus class 0), the single logit of the paper's table. Each update sees every training
domain in full.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fishr_tune.errors import ConfigError

if TYPE_CHECKING:
    from fishr_tune.algorithms.base import Algorithm

N_FEATURES = 4
TRAIN_DOMAINS = (0, 1)
TEST_DOMAIN = 2
# Figure 2's shares, in percent of a domain (x3's labels in percent of x3).
SHARE_X1, SHARE_X2, SHARE_X3, X3_POSITIVE = 50, 40, 10, 30

# Table 1 of Shi et al. (the lecture's copy): accuracy in percent, W and b of the linear model.
PAPER_TABLE1: dict[str, dict[str, Any]] = {
    "ERM": {"train_acc": 97.0, "test_acc": 57.0, "W": [2.8, 3.3, 3.3, 0.0], "b": -2.7},
    "IDGM": {"train_acc": 93.0, "test_acc": 93.0, "W": [0.4, 0.2, 0.2, 0.0], "b": -0.4},
}
METHODS: tuple[str, ...] = ("ERM", "IDGM", "Fish", "Fishr")


@dataclass(frozen=True)
class LinearDomain:
    name: str
    x: torch.Tensor
    y: torch.Tensor


def x2_input(domain: int) -> list[float]:
    """Domain `domain`'s x2: the shared first coordinate and the domain's own coordinate 1 + domain."""
    row = [1.0, 0.0, 0.0, 0.0]
    row[1 + domain] = 1.0
    return row


def build_domains(n_per_domain: int = 1000) -> list[LinearDomain]:
    """The two training domains and the test domain, with Figure 2's exact shares (n a multiple of 100)."""
    if n_per_domain < 100 or n_per_domain % 100:
        raise ConfigError(f"--n-per-domain: expected a positive multiple of 100 (the shares are 50/40/10%, 30% of 10%), got {n_per_domain}")
    n1, n2, n3 = (n_per_domain * share // 100 for share in (SHARE_X1, SHARE_X2, SHARE_X3))
    n3_positive = n3 * X3_POSITIVE // 100
    domains = []
    for d, name in enumerate(("train 1", "train 2", "test")):
        rows = [[0.0] * N_FEATURES] * n1 + [x2_input(d)] * n2 + [[1.0, 0.0, 0.0, 0.0]] * n3
        labels = [0] * n1 + [1] * n2 + [1] * n3_positive + [0] * (n3 - n3_positive)
        domains.append(LinearDomain(name, torch.tensor(rows), torch.tensor(labels)))
    return domains


@dataclass(frozen=True)
class Settings:
    """Full-batch Adam on every training domain; per-method hyperparameters on top of the registry's defaults."""

    steps: int = 100
    lr: float = 0.01
    seed: int = 0
    n_per_domain: int = 1000
    method_hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: {
        "IDGM": {"idgm_gamma": 1.0},
        "Fish": {"meta_lr": 0.5},
        "Fishr": {"lambda": 1000.0, "penalty_anneal_iters": 0},
    })

    def check(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"--steps: expected a positive number of steps, got {self.steps}")
        if not self.lr > 0:
            raise ConfigError(f"--lr: expected a positive learning rate, got {self.lr}")


@dataclass
class MethodResult:
    method: str
    train_acc: float
    test_acc: float
    W: list[float]
    b: float
    history: list[dict[str, float]] = field(default_factory=list)


def linear_head(algorithm: nn.Module) -> nn.Linear:
    head = algorithm.classifier
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{type(algorithm).__name__}'s classifier is {type(head).__name__}, not a linear head")
    return head


def logit_difference(head: nn.Linear) -> tuple[list[float], float]:
    """(W, b) of the single logit equivalent to the 2-class head: class 1's row minus class 0's."""
    weight = head.weight.detach().double()
    bias = head.bias.detach().double()
    return (weight[1] - weight[0]).tolist(), float(bias[1] - bias[0])


@torch.no_grad()
def accuracy(algorithm: Algorithm, domains: Sequence[LinearDomain]) -> float:
    correct = sum(int((algorithm.predict(d.x).argmax(dim=1) == d.y).sum()) for d in domains)
    return correct / sum(len(d.y) for d in domains)


def train_method(method: str, domains: Sequence[LinearDomain], settings: Settings,
                 log_every: int = 0) -> MethodResult:
    """Train one registry algorithm on the linear model from zero weights and report the paper's quantities."""
    from fishr_tune.algorithms import get_algorithm_class
    from fishr_tune.hparams import apply_overrides, default_hparams
    from fishr_tune.training import seed_everything

    dataset = "ColoredMNIST-IRM"  # any small-images space: the shared hyperparameters are only the scaffold here
    overrides = {"hidden_layers": 0, "lr": settings.lr, **settings.method_hparams.get(method, {})}
    hparams = apply_overrides(method, dataset, default_hparams(method, dataset), overrides, where=f"fish-linear {method}")
    seed_everything(settings.seed)
    algorithm = get_algorithm_class(method)((N_FEATURES,), 2, len(TRAIN_DOMAINS), hparams)
    with torch.no_grad():
        for p in linear_head(algorithm).parameters():
            p.zero_()
    train = [domains[i] for i in TRAIN_DOMAINS]
    minibatches = [(d.x, d.y) for d in train]
    history: list[dict[str, float]] = []
    for step in range(settings.steps):
        out = algorithm.update(minibatches)
        if log_every and (step % log_every == 0 or step == settings.steps - 1):
            history.append({"step": step, **out, "train_acc": accuracy(algorithm, train),
                            "test_acc": accuracy(algorithm, [domains[TEST_DOMAIN]])})
    algorithm.eval()
    w, b = logit_difference(linear_head(algorithm))
    return MethodResult(method, accuracy(algorithm, train), accuracy(algorithm, [domains[TEST_DOMAIN]]), w, b, history)


def parse_methods(text: str) -> list[str]:
    from fishr_tune.reproduce.config import parse_name_list

    return parse_name_list(text, METHODS, kind="method")


def run(methods: Sequence[str], settings: Settings, log_every: int = 0,
        on_result: Callable[[MethodResult], None] | None = None) -> list[MethodResult]:
    settings.check()
    torch.set_num_threads(1)  # 4-feature full batches: extra threads only add synchronization
    domains = build_domains(settings.n_per_domain)
    results = []
    for method in methods:
        result = train_method(method, domains, settings, log_every)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


# ---------------------------------------------------------------- formatting


def to_json(results: Sequence[MethodResult]) -> dict[str, dict[str, Any]]:
    """{method: {train_acc, test_acc, W, b}}, accuracies in percent like the paper's table."""
    return {r.method: {"train_acc": 100 * r.train_acc, "test_acc": 100 * r.test_acc, "W": r.W, "b": r.b}
            for r in results}


def _vector(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in values) + "]"


def format_table(results: Sequence[MethodResult], settings: Settings) -> str:
    header = ["Method", "Train acc", "Test acc", "W", "b", "Paper train", "Paper test", "Paper W", "Paper b"]
    rows = []
    for r in results:
        paper = PAPER_TABLE1.get(r.method)
        row = [r.method, f"{100 * r.train_acc:.1f}%", f"{100 * r.test_acc:.1f}%", _vector(r.W), f"{r.b:.1f}"]
        if paper:
            row += [f"{paper['train_acc']:.0f}%", f"{paper['test_acc']:.0f}%", _vector(paper["W"]), f"{paper['b']:.1f}"]
        else:
            row += ["n/a"] * 4
        rows.append(row)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    shares = f"x1 {SHARE_X1}%, x2 {SHARE_X2}%, x3 {SHARE_X3}% ({X3_POSITIVE}% of it label 1)"
    lines += [
        "",
        f"Data: 2 training domains and 1 test domain of {settings.n_per_domain} inputs each: {shares}.",
        f"Training: full batch, Adam lr {settings.lr:g}, {settings.steps} steps, from zero weights (seed {settings.seed}); "
        + ", ".join(f"{m} {', '.join(f'{k}={v:g}' for k, v in hp.items())}" for m, hp in settings.method_hparams.items()),
        "Paper: Shi et al. 2021, Table 1 (as the lecture shows it); Fish and Fishr have no row there.",
    ]
    return "\n".join(lines)
