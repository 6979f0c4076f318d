"""What a sweep's MLflow runs say about where they come from: dataset inputs (one per environment and split,
with MLflow's digest and size) and source tags (entry point, git commit).

Computed once in the driver, where the data is built, and journaled as plain dicts (fishr_tune.tracking.journal), so
trials never talk to MLflow and a replayed journal logs the same inputs again (MLflow dedups them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fishr_tune.data import MultiDomainDataset, holdout_split

# A split's role in one trial, as MLflow's dataset-context tag shows it next to the input.
TRAINING, VALIDATION, TEST = "training", "validation", "test"


def _source(dataset: MultiDomainDataset, env: Any) -> Any:
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.sources import LocalArtifactDatasetSource  # type: ignore[attr-defined]  # made at import

    root = getattr(env, "root", None)
    if root is not None:
        return LocalArtifactDatasetSource(str(Path(root).resolve()))
    return CodeDatasetSource(tags={"fishr_tune.data_source": dataset.source})


def split_entities(dataset: MultiDomainDataset, trial_seed: int, holdout_fraction: float) -> dict[str, dict[str, Any]]:
    """`"<env>/<split>"` -> the fields of an `mlflow.entities.Dataset` for that split (name, digest, schema, profile).

    The splits are DomainBed's (fishr_tune.data.holdout_split), the same ones every trial of this trial seed uses;
    in-memory environments are digested from their tensors, file-backed ones from their file list and labels.
    """
    import warnings

    import pandas as pd
    from mlflow.data.dataset import Dataset
    from mlflow.data.numpy_dataset import from_numpy
    from mlflow.data.pandas_dataset import from_pandas

    out: dict[str, dict[str, Any]] = {}
    for index, env in enumerate(dataset.environments):
        in_idx, out_idx = holdout_split(len(env), holdout_fraction, trial_seed, index)
        for split, idx in (("in", in_idx), ("out", out_idx)):
            name = f"{dataset.name} ts{trial_seed} env{index} ({env.name}) {split}"
            keys = idx.numpy()
            data: Dataset
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # MLflow's hint about integer columns in the schema
                if hasattr(env, "x"):
                    data = from_numpy(env.x[idx].numpy(), source=_source(dataset, env),
                                      targets=env.y[idx].numpy(), name=name)
                else:
                    frame = pd.DataFrame({"file": np.asarray(env.files, dtype=object)[keys], "label": env.y[idx].numpy()})
                    data = from_pandas(frame, source=_source(dataset, env), targets="label", name=name)
            entity = data._to_mlflow_entity()
            out[f"{index}/{split}"] = {"name": entity.name, "digest": entity.digest, "source_type": entity.source_type,
                                       "source": entity.source, "schema": entity.schema, "profile": entity.profile}
    return out


def trial_inputs(entities: dict[str, dict[str, Any]], test_envs: list[int]) -> list[dict[str, Any]]:
    """A trial's inputs: training environments' `in` (training) and `out` (validation), test environments' both (test)."""
    inputs = []
    for key, entity in entities.items():
        env, split = key.split("/")
        context = TEST if int(env) in test_envs else (TRAINING if split == "in" else VALIDATION)
        inputs.append({"dataset": entity, "context": context})
    return inputs


def source_tags(entry_point: str) -> dict[str, str]:
    """MLflow's source tags: `entry_point` (the UI shows its last path segment, so a short name: `fishr-tune sweep
    quickstart.yaml`) and, in a git checkout, the commit of fishr-tune's code."""
    from mlflow.utils.git_utils import get_git_commit, get_git_repo_url
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE

    tags = {MLFLOW_SOURCE_NAME: entry_point, MLFLOW_SOURCE_TYPE: "LOCAL"}
    package = str(Path(__file__).resolve().parents[1])
    commit = get_git_commit(package)
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
        url = get_git_repo_url(package)
        if url:
            tags[MLFLOW_GIT_REPO_URL] = url
    return tags
