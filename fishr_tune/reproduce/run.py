"""Running the reproduction: every (algorithm, restart) in process or as Ray tasks, gathered into a Reproduction
with what is needed to read it (settings, data, timing, the papers' numbers)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from fishr_tune.data import MultiDomainDataset
from fishr_tune.errors import ConfigError, unknown_name_error
from fishr_tune.reproduce.config import (
    IRM_TABLE1,
    METRICS,
    OPTIMAL_INVARIANT_PERCENT,
    PAPER_TABLE2,
    REPRODUCIBLE_ALGORITHMS,
    OnProgress,
    ScriptConfig,
    restart_seed,
)
from fishr_tune.reproduce.restarts import (
    RestartResult,
    _ray_task,
    build_restart_dataset,
    train_restart,
)


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
    on_progress: OnProgress | None = None,
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
        if name not in REPRODUCIBLE_ALGORITHMS:
            raise unknown_name_error("algorithm", name, REPRODUCIBLE_ALGORITHMS)
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
            pending += [task.remote(a, dataset_ref, restart, seed, config, max(1, int(cpus)), report_progress)  # type: ignore[call-arg]
                        for a in algorithms]  # Ray's stubs type .remote() up to 5 arguments
            del dataset
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            finished(ray.get(done[0]))
    finally:
        if started_here:
            ray.shutdown()





