"""One restart of the script's loop (in process or as a Ray task) and the inconsistency score of its final model."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from fishr_tune.data import Environment, MultiDomainDataset, get_dataset
from fishr_tune.inconsistency import Domain, inconsistency
from fishr_tune.reproduce.config import (
    DATASET_NAME,
    GRAY_TEST_ENV,
    GRAYSCALE_ORACLE,
    TEST_ENV,
    TRAIN_ENVS,
    OnProgress,
    ScriptConfig,
)
from fishr_tune.reproduce.model import IrmMLP, mean_accuracy, training_loss


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
    num_threads: int | None = None, on_progress: OnProgress | None = None,
) -> RestartResult:
    """One run of the script's loop. Accuracies are those of the final step's forward pass, before its update,
    exactly what the script prints as "final"; test environments are evaluated only when recording.
    """
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    envs = cast(list[Environment], dataset.environments)  # Colored MNIST: tensors in memory
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
