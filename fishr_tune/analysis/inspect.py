"""`fishr-tune inspect RUN_DIR`: the inconsistency score of a trained run, read back from its output directory.

A `fishr-tune train` directory holds `config.yaml` (every setting, hyperparameters resolved) and `checkpoint.pt`
(the trainer's state at its last checkpoint). The run's data and in/out splits are rebuilt from the config (they
depend only on the trial seed), the checkpoint is loaded with ``weights_only=True``, and the score is computed
on the training environments' `in` splits: the examples the model was trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fishr_tune.data import DATASET_ENVIRONMENTS
from fishr_tune.errors import ConfigError
from fishr_tune.gradvar import LossKind
from fishr_tune.inconsistency import (
    DEFAULT_DAMPING,
    DEFAULT_EPSILON,
    Domain,
    InconsistencyReport,
    Method,
    check_damping,
    check_epsilon,
    inconsistency,
)
from fishr_tune.training import CHECKPOINT_FILE, CONFIG_FILE, EVAL_CHUNK_SIZE, Trainer, load_config_file, make_config


@dataclass
class RunInspection:
    run_dir: str
    dataset: str
    algorithm: str
    test_envs: list[int]
    step: int  # optimizer steps the checkpoint had taken; its last record is step - 1
    report: InconsistencyReport

    def to_json(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "dataset": self.dataset, "algorithm": self.algorithm,
                "test_envs": self.test_envs, "checkpoint_step": self.step, "record_step": self.step - 1,
                **self.report.to_json()}


def load_trainer(run_dir: str | Path, data_dir: str | None = None) -> Trainer:
    """The run's trainer at its checkpoint (on the CPU): config first, so a bad directory fails before any data."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"RUN_DIR: {run_dir} is not a directory")
    config_path, checkpoint = run_dir / CONFIG_FILE, run_dir / CHECKPOINT_FILE
    for path in (config_path, checkpoint):
        if not path.is_file():
            raise ConfigError(f"RUN_DIR: {path} does not exist (expected a `fishr-tune train` output directory)")
    values = load_config_file(config_path)
    values.update({"device": "cpu", "download": False, "output_dir": str(run_dir)})
    if data_dir is not None:
        values["data_dir"] = data_dir
    trainer = Trainer(make_config(values, str(config_path)))
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        trainer.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, EOFError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{checkpoint}: not a checkpoint of this run's model ({first})") from None
    return trainer


def _features(trainer: Trainer, x: torch.Tensor) -> torch.Tensor:
    featurizer = trainer.algorithm.featurizer
    with torch.no_grad():
        return torch.cat([featurizer(x[i : i + EVAL_CHUNK_SIZE]) for i in range(0, len(x), EVAL_CHUNK_SIZE)])


def training_domains(trainer: Trainer) -> list[Domain]:
    """Featurizer outputs and labels of every training environment's `in` split, in eval mode."""
    trainer.algorithm.eval()
    names = DATASET_ENVIRONMENTS[trainer.config.dataset]
    domains = []
    if trainer.file_splits is None:
        for i in trainer.train_envs:
            x, y = trainer.splits[i]["in"]
            domains.append(Domain(names[i], _features(trainer, x), y))
        return domains
    from torch.utils.data import DataLoader

    splits = trainer.file_splits
    for i in trainer.train_envs:
        group = splits.groups.index((i, "in"))
        keys = [(int(j), -1) for j in torch.nonzero(splits.group_ids.cpu() == group).flatten().tolist()]
        features, labels = [], []
        with torch.no_grad():
            for images, target in DataLoader(splits.eval_data, batch_size=EVAL_CHUNK_SIZE, sampler=keys):
                images, target = splits.to_device(images, target)
                features.append(trainer.algorithm.featurizer(images))
                labels.append(target)
        domains.append(Domain(names[i], torch.cat(features), torch.cat(labels)))
    return domains


def loss_kind(trainer: Trainer) -> LossKind:
    return "binary_cross_entropy" if trainer.dataset.num_classes == 1 else "cross_entropy"


def inspect_run(run_dir: str | Path, epsilon: float = DEFAULT_EPSILON, damping: float = DEFAULT_DAMPING,
                method: Method = "auto", data_dir: str | None = None) -> RunInspection:
    check_epsilon(epsilon)
    check_damping(damping)
    trainer = load_trainer(run_dir, data_dir)
    try:
        report = inconsistency(trainer.algorithm.classifier, training_domains(trainer), loss_kind(trainer),
                               epsilon=epsilon, damping=damping, method=method)
    finally:
        trainer.close()
    return RunInspection(str(run_dir), trainer.config.dataset, trainer.config.algorithm, trainer.test_envs,
                         trainer.step, report)


def format_json(inspection: RunInspection) -> str:
    return json.dumps(inspection.to_json(), indent=2)


def table_lines(inspection: RunInspection) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the three tables that `inspect` prints: domains, pairs, the score."""
    r = inspection.report
    domains = [[d.name, f"{d.n:,}", f"{d.risk:.5f}", f"{d.hessian_max_eigenvalue:.4g}", f"{d.damping_delta:.3g}",
                "-" if d.flat_directions is None else str(d.flat_directions), f"{d.gradvar_mean:.4g}"]
               for d in r.domains]
    pairs = [[p.a, p.b, f"{p.risk_gap:+.5f}", f"{p.generalized_eigenvalue:.4g}", f"{p.curvature:.5f}", f"{p.total:.5f}",
              f"{p.diagonal_eigenvalue:.4g}", f"{p.total_diagonal:.5f}", f"{p.gradvar_distance:.4g}"] for p in r.pairs]
    score = [
        [f"exact ({r.method})", f"{r.inconsistency:.5f}", f"{r.argmax[0]} -> {r.argmax[1]}"],
        ["diagonal (Fishr's v_e)", f"{r.inconsistency_diagonal:.5f}", f"{r.argmax_diagonal[0]} -> {r.argmax_diagonal[1]}"],
        ["Fishr penalty (all domains)", f"{r.fishr_penalty:.4g}", ""],
    ]
    return [
        ("Training domains (in splits)", ["domain", "n", "risk R_e", "lambda_max(H_e)", "delta_e", "flat dirs",
                                          "mean v_e"], domains),
        (f"Ordered pairs (A, B), eps {r.epsilon:g}", ["A", "B", "R_B - R_A", "lambda(H_B, H_A+dI)", "eps*lambda",
                                                      "total", "lambda diag", "total diag", "|v_A - v_B|^2"], pairs),
        (f"{inspection.algorithm} on {inspection.dataset}, test envs {inspection.test_envs}, step {inspection.step - 1}: "
         f"inconsistency I^eps ({r.n_params:,} head parameters, relative damping {r.damping:g})",
         ["computation", "score", "attained by (A -> B)"], score),
    ]


@dataclass
class SelectedScore:
    """The score of one selected model, or why it could not be computed (None)."""

    selected: dict[str, Any]  # the selection's group (dataset, algorithm, test_env, trial_seed), run and step
    inconsistency: float | None
    inconsistency_diagonal: float | None
    note: str


def score_selected(selected: Any, records_root: str | Path | None, epsilon: float = DEFAULT_EPSILON,
                   damping: float = DEFAULT_DAMPING) -> list[SelectedScore]:
    """`analyze --inconsistency`: the score of every selected (run, step) whose checkpoint is at that very step.

    Only `fishr-tune train` directories (`--records DIR`) keep a checkpoint next to their records, and only the
    last one: a model selected at an earlier step, or read from MLflow / Ray / parquet, gets no score and a note
    saying why (never the score of another step).
    """
    check_epsilon(epsilon)
    check_damping(damping)
    root = Path(records_root) if records_root is not None else None
    if root is not None and root.is_file():
        root = root.parent if root.suffix != ".parquet" else None
    cache: dict[str, tuple[int, InconsistencyReport] | str] = {}
    out = []
    for row in selected.to_dict("records"):
        run, step = str(row["run"]), int(row["step"])
        if run not in cache:
            run_dir = None if root is None else root / run
            if run_dir is None or not (run_dir / CHECKPOINT_FILE).is_file():
                cache[run] = ("no checkpoint reachable: only `--records` directories of `fishr-tune train` runs keep "
                              "one" if run_dir is None else f"no checkpoint at {run_dir / CHECKPOINT_FILE}")
            else:
                try:
                    inspection = inspect_run(run_dir, epsilon=epsilon, damping=damping)
                    cache[run] = (inspection.step - 1, inspection.report)
                except ConfigError as error:
                    cache[run] = f"checkpoint not usable: {error}"
        found = cache[run]
        base = {"dataset": str(row["dataset"]), "algorithm": str(row["algorithm"]), "test_env": int(row["test_env"]),
                "trial_seed": int(row["trial_seed"]), "run": run, "step": step}
        if isinstance(found, str):
            out.append(SelectedScore(base, None, None, found))
        elif found[0] != step:
            out.append(SelectedScore(base, None, None, f"the checkpoint is at step {found[0]}, not the selected step"))
        else:
            out.append(SelectedScore(base, found[1].inconsistency, found[1].inconsistency_diagonal, "at the selected step"))
    return out
