"""Reproduction of the Fishr paper's Table 2: Colored MNIST in the IRM setup (Rame et al., ICML 2022, Sec. 6.A).

Faithful to the official script (alexrame/fishr ``coloredmnist/train_coloredmnist.py``, itself the IRM repo's
``colored_mnist/main.py``), not to the DomainBed protocol: full-batch steps on two training environments,
a single-logit MLP trained with binary cross-entropy, an explicit L2 term, the IRM paper's tuned
hyperparameters (shared by every method), and the script's penalty-annealing/rescaling rule. Restarts run as
Ray tasks (one per algorithm and restart), or sequentially in-process with ``use_ray=False``.

The script's reductions are kept on purpose even where DomainBed differs: its Fishr penalty *sums* the squared
differences (DomainBed averages them), and the penalty weight below was tuned for those magnitudes.

Two Fishr variants of the paper's Table 6 (Appendix C.2.4) follow the script's ``compute_grads_variance``:
Fishr-notcentered (the gradients' second moment, not centred) and Fishr-offdiagonal (each head parameter
tensor's full centred covariance, divided by n * p_t). The paper's numbers for them are not embedded (n/a).

ERM-grayscale is the IRM paper's Table 1 oracle (its script's ``--grayscale_model``): ERM whose model never sees
the colour, since it adds the two colour channels before the MLP (14x14 inputs). It is shown beside IRM's Table 1
numbers, with that table's hypothetical optimal invariant model (75 / 75: the label noise caps what the digit
shape alone can predict) as a reference line.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fishr_tune.data import MultiDomainDataset, get_dataset
from fishr_tune.errors import ConfigError, quote, unknown_name_error
from fishr_tune.gradvar import get_engine
from fishr_tune.inconsistency import Domain, check_epsilon, inconsistency
from fishr_tune.networks import MLP

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
ALGORITHMS: tuple[str, ...] = (
    *PAPER_TABLE2, *(name for name in FISHR_VARIANTS if name not in PAPER_TABLE2), GRAYSCALE_ORACLE,
)
DEFAULT_ALGORITHMS: tuple[str, ...] = (*PAPER_TABLE2, GRAYSCALE_ORACLE)
UNPENALIZED: tuple[str, ...] = ("ERM", GRAYSCALE_ORACLE)
METRICS: tuple[str, ...] = ("train_acc", "test_acc", "gray_test_acc")

ProgressCallback = Callable[[str], None]


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
    """Comma-separated names, matched case-insensitively to ALGORITHMS (in the order given)."""
    return parse_name_list(text, ALGORITHMS)


def restart_seed(seed: int, restart: int) -> int:
    """Seed of restart `restart`: it seeds that restart's data and its model initialization, for every algorithm."""
    return seed * 1000 + restart


def remove_color(x: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) -> (N, H, W): the digit without its colour, the grayscale oracle's only view of an image.

    A coloured digit has one channel zeroed, so this equals the IRM script's channel sum on every coloured image;
    the maximum (not the sum) also gives the same digit for the gray copy, whose two channels both hold it.
    """
    return x.amax(dim=1)


class IrmMLP(nn.Module):
    """The script's model: MLP body (2x14x14 -> 390 -> 390, ReLU) and a single-logit linear head, Xavier/zero init.

    `grayscale` is the script's grayscale model: colour removed before the body, which then has H*W inputs.
    """

    def __init__(self, n_inputs: int = 2 * 14 * 14, hidden_dim: int = 390, grayscale: bool = False):
        super().__init__()
        self.grayscale = grayscale
        self.body = MLP(n_inputs // 2 if grayscale else n_inputs, hidden_dim, hidden_layers=2)
        self.classifier = nn.Linear(hidden_dim, 1)
        nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(remove_color(x) if self.grayscale else x)
        return features, self.classifier(features)


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.reshape(-1), labels.reshape(-1).to(logits.dtype))


def mean_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return ((logits.reshape(-1) > 0).long() == labels.reshape(-1)).float().mean()


def irm_penalty(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """IRMv1: squared derivative of the environment's risk with respect to a dummy scale on the logits, at 1."""
    scale = torch.ones((), dtype=logits.dtype, requires_grad=True)
    grad = torch.autograd.grad(mean_nll(logits * scale, labels), [scale], create_graph=True)[0]
    return grad.pow(2).sum()


def vrex_penalty(env_nlls: Sequence[torch.Tensor]) -> torch.Tensor:
    """The script's V-REx ("rex") penalty for two environments: squared difference of their risks."""
    first, second = env_nlls
    return (first - second).pow(2)


def fishr_penalty(
    classifier: nn.Linear, features: torch.Tensor, labels: torch.Tensor, domain_sizes: Sequence[int],
    logits: torch.Tensor | None = None, centered: bool = True, full_covariance: bool = False,
) -> torch.Tensor:
    """Sum over environments of the summed squared distance between the environment's centred per-sample
    gradient variance (head weight and bias) and the variance averaged over environments, as the script does.
    `centered` and `full_covariance` select the Table 6 variants (see FISHR_VARIANTS).
    """
    variances = get_engine("closed_form").per_domain(
        classifier, features, labels, domain_sizes, loss="binary_cross_entropy", centered=centered,
        full_covariance=full_covariance, logits=logits,
    )
    return (variances - variances.mean(dim=0, keepdim=True)).pow(2).sum()


@dataclass
class StepOutput:
    loss: torch.Tensor
    train_nll: float
    train_acc: float
    penalty: float


def training_loss(
    algorithm: str, model: IrmMLP, envs_x: Sequence[torch.Tensor], envs_y: Sequence[torch.Tensor], step: int,
    config: ScriptConfig,
) -> StepOutput:
    """The script's objective at `step`: mean env NLL + L2 on all parameters + annealed penalty, rescaled."""
    sizes = [len(y) for y in envs_y]
    features, logits = model(torch.cat(list(envs_x)))
    labels = torch.cat(list(envs_y))
    env_logits = torch.split(logits, sizes)
    env_nlls = [mean_nll(lg, y) for lg, y in zip(env_logits, envs_y)]
    train_nll = torch.stack(env_nlls).mean()
    train_acc = torch.stack([mean_accuracy(lg, y) for lg, y in zip(env_logits, envs_y)]).mean()
    weight_norm = sum(w.pow(2).sum() for w in model.parameters())
    loss = train_nll + config.l2_regularizer_weight * weight_norm
    penalty = torch.zeros(())
    if algorithm not in UNPENALIZED:
        if algorithm == "IRM":
            penalty = torch.stack([irm_penalty(lg, y) for lg, y in zip(env_logits, envs_y)]).mean()
        elif algorithm == "VREx":
            penalty = vrex_penalty(env_nlls)
        elif algorithm in FISHR_VARIANTS:
            centered, full_covariance = FISHR_VARIANTS[algorithm]
            penalty = fishr_penalty(model.classifier, features, labels, sizes, logits=logits, centered=centered,
                                    full_covariance=full_covariance)
        else:
            raise unknown_name_error("algorithm", algorithm, ALGORITHMS)
        penalty_weight = config.penalty_weight if step >= config.penalty_anneal_iters else 1.0
        loss = loss + penalty_weight * penalty
        if penalty_weight > 1.0:
            loss = loss / penalty_weight
    return StepOutput(loss, float(train_nll.detach()), float(train_acc), float(penalty.detach()))


@dataclass
class RestartResult:
    """Final accuracies (fractions) of one algorithm on one restart, at the last step as the script reports them."""

    algorithm: str
    restart: int
    seed: int
    train_acc: float
    test_acc: float
    gray_test_acc: float
    train_nll: float
    penalty: float
    wall_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    # fishr_tune.inconsistency's report (JSON) of the final model, when ScriptConfig.inconsistency_epsilon is set.
    inconsistency: dict[str, Any] | None = None


@torch.no_grad()
def _accuracy(model: IrmMLP, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(mean_accuracy(model(x)[1], y))


def train_restart(
    algorithm: str, dataset: MultiDomainDataset, restart: int, seed: int, config: ScriptConfig,
    num_threads: int | None = None, on_progress: ProgressCallback | None = None,
) -> RestartResult:
    """One run of the script's loop. Accuracies are those of the final step's forward pass, before its update,
    exactly what the script prints as "final"; test environments are evaluated only when recording.
    """
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    envs = dataset.environments
    envs_x = [envs[i].x for i in TRAIN_ENVS]
    envs_y = [envs[i].y for i in TRAIN_ENVS]
    model = IrmMLP(math.prod(dataset.input_shape), config.hidden_dim, grayscale=algorithm == GRAYSCALE_ORACLE)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    record: dict[str, float] = {}
    for step in range(config.steps):
        last = step == config.steps - 1
        logging = config.log_every > 0 and step % config.log_every == 0
        if last or logging:
            # Before the update, as the script measures every environment in the same forward pass.
            test_acc = _accuracy(model, envs[TEST_ENV].x, envs[TEST_ENV].y)
            gray_acc = _accuracy(model, envs[GRAY_TEST_ENV].x, envs[GRAY_TEST_ENV].y)
        out = training_loss(algorithm, model, envs_x, envs_y, step, config)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if last or logging:
            record = {"step": step, "train_nll": out.train_nll, "train_acc": out.train_acc, "penalty": out.penalty,
                      "test_acc": test_acc, "gray_test_acc": gray_acc}
            history.append(record)
            if on_progress is not None:
                on_progress(
                    f"{algorithm} restart {restart} step {step}: train nll {out.train_nll:.4f} "
                    f"train acc {out.train_acc:.3f} penalty {out.penalty:.4g} test acc {test_acc:.3f} "
                    f"gray test acc {gray_acc:.3f}"
                )
    wall_s = time.perf_counter() - start
    score = None
    if config.inconsistency_epsilon is not None:
        score = restart_inconsistency(model, envs_x, envs_y, config.inconsistency_epsilon)
    return RestartResult(
        algorithm, restart, seed, record["train_acc"], record["test_acc"], record["gray_test_acc"],
        record["train_nll"], record["penalty"], wall_s, history, score,
    )


def restart_inconsistency(model: IrmMLP, envs_x: Sequence[torch.Tensor], envs_y: Sequence[torch.Tensor],
                          epsilon: float) -> dict[str, Any]:
    """The score of the trained model (after its last update) on the training environments, whole, with the
    script's binary cross-entropy as each environment's risk (the L2 term is the same for every environment)."""
    model.eval()
    with torch.no_grad():
        domains = [Domain(f"env{i}", model.body(x), y) for i, x, y in zip(TRAIN_ENVS, envs_x, envs_y)]
    return inconsistency(model.classifier, domains, "binary_cross_entropy", epsilon=epsilon).to_json()


def build_restart_dataset(seed: int, data_dir: str | None, label_noise: float) -> MultiDomainDataset:
    return get_dataset(DATASET_NAME, data_dir=data_dir, seed=seed, label_noise=label_noise, grayscale_test=True)


def _print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _ray_task(algorithm: str, dataset: MultiDomainDataset, restart: int, seed: int, config: ScriptConfig,
              num_threads: int, report_progress: bool = True) -> RestartResult:
    """Body of the Ray task; progress lines reach the driver's stderr through Ray's log forwarding."""
    progress = _print_progress if report_progress else None
    return train_restart(algorithm, dataset, restart, seed, config, num_threads, on_progress=progress)


@dataclass
class Reproduction:
    """All per-restart results plus what is needed to read them: settings, data, timing."""

    algorithms: list[str]
    restarts: int
    seed: int
    config: ScriptConfig
    data_summary: str
    env_sizes: dict[str, int]
    results: list[RestartResult]
    wall_s: float
    executor: str
    complete: bool = False

    def summary_percent(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per algorithm and metric: mean and population std (numpy's default, as the script) in percent."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for algorithm in self.algorithms:
            rows = [r for r in self.results if r.algorithm == algorithm]
            if not rows:  # a partial reproduction (saved while running) may not have reached it yet
                continue
            out[algorithm] = {}
            for metric in METRICS:
                values = torch.tensor([getattr(r, metric) for r in rows], dtype=torch.float64) * 100
                out[algorithm][metric] = {
                    "mean": float(values.mean()), "std": float(values.std(unbiased=False)), "n": len(rows),
                }
        return out

    def inconsistency_summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per algorithm and term of the score (restarts that computed it): mean and population std."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for algorithm in self.algorithms:
            reports = [r.inconsistency for r in self.results if r.algorithm == algorithm and r.inconsistency]
            if not reports:
                continue
            out[algorithm] = {}
            for name, extract in INCONSISTENCY_TERMS.items():
                values = torch.tensor([extract(report) for report in reports], dtype=torch.float64)
                out[algorithm][name] = {"mean": float(values.mean()), "std": float(values.std(unbiased=False)),
                                        "n": len(reports)}
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": "Fishr paper Table 2: Colored MNIST, IRM setup",
            "algorithms": self.algorithms,
            "restarts": self.restarts,
            "seed": self.seed,
            "config": asdict(self.config),
            "matches_paper_settings": self.config.matches_paper(),
            "data": {"summary": self.data_summary, "env_sizes": self.env_sizes},
            "executor": self.executor,
            "wall_s": self.wall_s,
            "complete": self.complete,
            "results": [asdict(r) for r in self.results],
            "summary_percent": self.summary_percent(),
            "inconsistency_summary": self.inconsistency_summary(),
            "paper_percent": {a: {m: {"mean": v[0], "std": v[1]} for m, v in paper_numbers(a).items()}
                              for a in self.algorithms if paper_numbers(a)},
            "reference_percent": {"optimal_invariant": dict(OPTIMAL_INVARIANT_PERCENT)},
        }


def paper_numbers(algorithm: str) -> dict[str, tuple[float, float]]:
    """The published (mean, std) per metric: Fishr's Table 2, or IRM's Table 1 for the grayscale oracle."""
    return PAPER_TABLE2.get(algorithm) or IRM_TABLE1.get(algorithm) or {}


ResultCallback = Callable[[RestartResult, int, int, Reproduction], None]


def _argmax_pair(report: dict[str, Any], diagonal: bool = False) -> dict[str, Any]:
    a, b = report["argmax_diagonal" if diagonal else "argmax"]
    return next(p for p in report["pairs"] if p["a"] == a and p["b"] == b)


def _largest_cross_eigenvalue(report: dict[str, Any]) -> float:
    return max(p["generalized_eigenvalue"] for p in report["pairs"] if p["a"] != p["b"])


# The score's terms shown per algorithm: the score, the two terms of the pair that attains it, the largest
# cross-domain generalized eigenvalue (eps-free), the diagonal (Fishr) approximation and Fishr's penalty.
INCONSISTENCY_TERMS: dict[str, Callable[[dict[str, Any]], float]] = {
    "inconsistency": lambda r: r["inconsistency"],
    "risk_gap": lambda r: _argmax_pair(r)["risk_gap"],
    "curvature": lambda r: _argmax_pair(r)["curvature"],
    "max_generalized_eigenvalue": _largest_cross_eigenvalue,
    "inconsistency_diagonal": lambda r: r["inconsistency_diagonal"],
    "fishr_penalty": lambda r: r["fishr_penalty"],
}


def run_reproduction(
    algorithms: Sequence[str],
    restarts: int,
    config: ScriptConfig,
    seed: int = 0,
    data_dir: str | None = None,
    use_ray: bool = True,
    address: str | None = None,
    cpus_per_restart: float | None = None,
    on_dataset: Callable[[MultiDomainDataset], None] | None = None,
    on_result: ResultCallback | None = None,
    on_progress: ProgressCallback | None = None,
) -> Reproduction:
    """Every (algorithm, restart) pair; a restart's dataset is built once and shared by all its algorithms.

    `on_result` receives each finished restart with the reproduction so far (results in finishing order),
    so that a long run can save partial results.
    """
    config.check()
    if restarts < 1:
        raise ConfigError(f"--restarts: expected at least 1, got {restarts}")
    if cpus_per_restart is not None and cpus_per_restart <= 0:
        raise ConfigError(f"--cpus-per-restart: expected a positive number, got {cpus_per_restart}")
    algorithms = list(algorithms)
    for name in algorithms:
        if name not in ALGORITHMS:
            raise unknown_name_error("algorithm", name, ALGORITHMS)
    start = time.perf_counter()
    seeds = [restart_seed(seed, r) for r in range(restarts)]
    first = build_restart_dataset(seeds[0], data_dir, config.label_noise)
    if on_dataset is not None:
        on_dataset(first)
    use_threads = None if cpus_per_restart is None else max(1, int(cpus_per_restart))
    reproduction = Reproduction(
        algorithms, restarts, seed, config, first.summary(),
        {f"env{i} {env.name}": len(env) for i, env in enumerate(first.environments)},
        [], 0.0, "in-process" if not use_ray else f"ray ({address or 'local'}, {cpus_per_restart or 1:g} CPU per task)",
    )
    total = len(algorithms) * restarts

    def finished(result: RestartResult) -> None:
        reproduction.results.append(result)
        reproduction.wall_s = time.perf_counter() - start
        if on_result is not None:
            on_result(result, len(reproduction.results), total, reproduction)

    if use_ray:
        _run_on_ray(algorithms, seeds, first, data_dir, config, address, cpus_per_restart, finished,
                    report_progress=on_progress is not None)
    else:
        for restart, restart_seed_value in enumerate(seeds):
            dataset = first if restart == 0 else build_restart_dataset(restart_seed_value, data_dir, config.label_noise)
            for algorithm in algorithms:
                finished(train_restart(algorithm, dataset, restart, restart_seed_value, config, use_threads, on_progress))
    order = {name: i for i, name in enumerate(algorithms)}
    reproduction.results.sort(key=lambda r: (order[r.algorithm], r.restart))
    reproduction.wall_s = time.perf_counter() - start
    reproduction.complete = True
    return reproduction


def _run_on_ray(
    algorithms: list[str], seeds: list[int], first: MultiDomainDataset, data_dir: str | None, config: ScriptConfig,
    address: str | None, cpus_per_restart: float | None, finished: Callable[[RestartResult], None],
    report_progress: bool,
) -> None:
    """One Ray task per (algorithm, restart), each asking for `cpus_per_restart` CPUs (default 1)."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if address is None:
            # A local raylet renices its workers by +15; on a shared machine they then starve behind everything
            # else (and under `nice -n 5` they hit 19). Ray's own job manager sets 0 too; the user may override.
            os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    cpus = 1.0 if cpus_per_restart is None else float(cpus_per_restart)
    task = ray.remote(_ray_task).options(num_cpus=cpus)
    try:
        pending = []
        for restart, seed in enumerate(seeds):
            dataset = first if restart == 0 else build_restart_dataset(seed, data_dir, config.label_noise)
            dataset_ref = ray.put(dataset)
            pending += [task.remote(a, dataset_ref, restart, seed, config, max(1, int(cpus)), report_progress) for a in algorithms]
            del dataset
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            finished(ray.get(done[0]))
    finally:
        if started_here:
            ray.shutdown()


# ---------------------------------------------------------------- formatting


def _cell(mean: float, std: float) -> str:
    return f"{mean:.1f} ± {std:.1f}"


def table_rows(reproduction: Reproduction) -> tuple[list[str], list[list[str]]]:
    """Header and rows: ours and the paper's per metric, and the test-accuracy difference (ours - paper)."""
    paper_setting = reproduction.config.label_noise == PAPER_LABEL_NOISE
    header = ["Algorithm", "Restarts", "Train acc", "Train (paper)", "Test acc", "Test (paper)", "Δ test",
              "Gray test acc", "Gray (paper)"]
    summary = reproduction.summary_percent()
    rows = []
    for algorithm in summary:
        ours = summary[algorithm]
        paper = paper_numbers(algorithm) if paper_setting else {}
        row = [algorithm, str(ours["train_acc"]["n"])]
        for metric in METRICS:
            row.append(_cell(ours[metric]["mean"], ours[metric]["std"]))
            row.append(_cell(*paper[metric]) if metric in paper else "n/a")
            if metric == "test_acc":
                row.append(f"{ours[metric]['mean'] - paper[metric][0]:+.1f}" if metric in paper else "n/a")
        rows.append(row)
    if paper_setting:
        optimum = OPTIMAL_INVARIANT_PERCENT
        rows.append(["Optimal invariant (hypothetical)", "-", "-", f"{optimum['train_acc']:.1f}", "-",
                     f"{optimum['test_acc']:.1f}", "-", "-", "-"])
    return header, rows


def notes(reproduction: Reproduction) -> list[str]:
    config = reproduction.config
    lines = ["Accuracy in percent, mean ± std (population) over restarts; paper: Fishr Table 2, 10 restarts."]
    if config.label_noise != PAPER_LABEL_NOISE:
        lines.append(f"Label noise {config.label_noise:g}: Table 2 uses 0.25, so its numbers are not shown.")
    if config.steps != PAPER_STEPS:
        lines.append(f"{config.steps} steps: the paper trains {PAPER_STEPS}, so the comparison is indicative only.")
    variants = [a for a in reproduction.algorithms if a in FISHR_VARIANTS and a not in PAPER_TABLE2]
    if variants:
        lines.append(f"{', '.join(variants)}: Table 6 variants (official script's definitions); their paper numbers "
                     "are not embedded.")
    if GRAYSCALE_ORACLE in reproduction.algorithms:
        lines.append(f"{GRAYSCALE_ORACLE}: IRM paper's Table 1 oracle (ERM on colour-free 14x14 digits), beside that "
                     "table's numbers (it reports no gray test).")
    if config.label_noise == PAPER_LABEL_NOISE:
        lines.append("Optimal invariant (hypothetical): IRM Table 1; with 25% label noise the digit alone gives 75%.")
    return lines


INCONSISTENCY_HEADER = ["Algorithm", "Restarts", "I^eps", "R_B - R_A", "eps*lambda", "lambda_max (A!=B)",
                        "I^eps diagonal", "Fishr penalty"]


def inconsistency_rows(reproduction: Reproduction) -> tuple[list[str], list[list[str]]]:
    """The score's table (empty when no restart computed it): mean ± std over restarts per term."""
    summary = reproduction.inconsistency_summary()
    rows = []
    for algorithm, terms in summary.items():
        rows.append([algorithm, str(terms["inconsistency"]["n"]),
                     *(f"{terms[name]['mean']:.4g} ± {terms[name]['std']:.2g}" for name in INCONSISTENCY_TERMS)])
    return INCONSISTENCY_HEADER, rows


def inconsistency_notes(reproduction: Reproduction) -> list[str]:
    epsilon = reproduction.config.inconsistency_epsilon
    return [f"Inconsistency score (eps {epsilon:g}) of the final model on the two training environments: "
            "I^eps = max over ordered pairs (A, B) of R_B - R_A + eps * lambda_max(H_B, H_A + delta I) on the head; "
            "R_B - R_A and eps*lambda are the pair that attains it; diagonal: H_e replaced by Fishr's gradient "
            "variances. See fishr_tune/inconsistency.py."]


def inconsistency_block(reproduction: Reproduction, markdown: bool) -> list[str]:
    """The score's table and its note, as lines to append after the accuracy table (none when not computed)."""
    header, rows = inconsistency_rows(reproduction)
    if not rows:
        return []
    if markdown:
        table = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        table += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        table = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
        table.insert(1, "  ".join("-" * w for w in widths))
    return ["", *table, "", *inconsistency_notes(reproduction)]


def format_table(reproduction: Reproduction) -> str:
    header, rows = table_rows(reproduction)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [""] + notes(reproduction) + inconsistency_block(reproduction, markdown=False))


def format_markdown(reproduction: Reproduction) -> str:
    header, rows = table_rows(reproduction)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines + [""] + notes(reproduction) + inconsistency_block(reproduction, markdown=True))


FORMATS: dict[str, Callable[[Reproduction], str]] = {"table": format_table, "markdown": format_markdown}
