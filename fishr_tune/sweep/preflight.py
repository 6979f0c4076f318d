"""Checks a sweep must pass before Ray starts: each would otherwise fail (or hang) only after the trials ran.

A trial asking for more CPUs or GPUs than any node can ever offer waits forever; a storage path that is a file,
or a tracking URI with a typo'd scheme, fails when the first result is written. Each check is one `ConfigError`
naming the key.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fishr_tune.errors import ConfigError, quote
from fishr_tune.files import nearest_existing_ancestor, path_problem

# The schemes MLflow 3 registers for tracking stores (mlflow/tracking/_tracking_service/utils.py), plus
# whatever plugins register under the "mlflow.tracking_store" entry point. "" is a plain local path.
MLFLOW_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc", "uc")
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # with an optional "+driver", as SQLAlchemy writes
# What Ray Tune's storage (pyarrow.fs, or fsspec where installed) resolves on every node.
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az", "memory")


def _plugin_schemes() -> tuple[str, ...]:
    return tuple(ep.name for ep in entry_points(group="mlflow.tracking_store"))


def check_tracking_uri(uri: str, where: str, local_files: bool = True) -> None:
    """The scheme must be one MLflow can open; `sqlte:///x.db` is refused here, not after the sweep trained."""
    if not uri.strip():
        raise ConfigError(f"{where}: expected a URI like 'sqlite:///mlflow.db', got an empty string")
    problem = path_problem(urlparse(uri).path if "://" in uri else uri)
    if problem:
        raise ConfigError(f"{where}: not a usable tracking URI: {problem}")
    scheme = urlparse(uri).scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter: a local path
        scheme = ""
    base = scheme.split("+", 1)[0]
    known = base in DATABASE_SCHEMES if "+" in scheme else scheme in MLFLOW_SCHEMES
    if not known and scheme not in _plugin_schemes():
        raise ConfigError(
            f"{where}: unknown tracking URI scheme {quote(scheme + ':')} in {quote(uri)}; MLflow accepts "
            f"{', '.join(s + ':' for s in MLFLOW_SCHEMES if s)} or a local path"
        )
    if scheme == "sqlite" and local_files:
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if path and path != ":memory:":
            _check_writable_parent(Path(path).expanduser(), where, "the database's folder")


def _check_writable_parent(path: Path, where: str, what: str) -> None:
    """The nearest existing ancestor of `path` must be a directory we can write into (it may create the rest)."""
    ancestor = nearest_existing_ancestor(path)
    if not ancestor.is_dir():
        raise ConfigError(f"{where}: {what} {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: {what} {ancestor} is not writable")


def check_storage_path(storage_path: str, where: str) -> None:
    """A local storage path must be (or be creatable as) a writable directory; a URI must have a known scheme."""
    problem = path_problem(storage_path)
    if problem:
        raise ConfigError(f"{where}: not a usable path: {problem}")
    if "://" in storage_path:
        scheme = storage_path.split("://", 1)[0].lower()
        if scheme not in STORAGE_SCHEMES:
            raise ConfigError(
                f"{where}: unknown storage URI scheme {quote(scheme + '://')}; expected a local directory or one of "
                f"{', '.join(s + '://' for s in STORAGE_SCHEMES)}"
            )
        if scheme != "file":
            return
        storage_path = storage_path.split("://", 1)[1]
    path = Path(storage_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{where}: {path} is a file, not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{where}: directory {path} is not writable")
        return
    _check_writable_parent(path, where, "the storage path's folder")


def local_gpus() -> int:
    """GPUs a local Ray would detect (it counts CUDA devices the same way)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_local_resources(cpu: float, gpu: float, num_cpus: int | None, where: str) -> None:
    """A local Ray offers `num_cpus` (default: every CPU) and this machine's GPUs; a trial asking more never starts."""
    cpus = num_cpus or os.cpu_count() or 1
    if cpu > cpus:
        raise ConfigError(f"{where}: key 'resources.cpu': a trial asks for {cpu:g} CPUs, but the local Ray has {cpus}"
                          + ("" if num_cpus else " (this machine's CPUs; --num-cpus sets it)"))
    if gpu > 0:
        gpus = local_gpus()
        if gpu > gpus:
            raise ConfigError(f"{where}: key 'resources.gpu': a trial asks for {gpu:g} GPUs, but this machine has {gpus}")


def check_before_ray(spec: Any, address: str | None, num_cpus: int | None) -> None:
    """What a sweep needs of this machine: where its results and MLflow records go, and (local Ray) its resources."""
    settings = spec.settings
    check_storage_path(settings.storage_path, f"{spec.source}: key 'storage_path'")
    check_tracking_uri(settings.tracking_uri, f"{spec.source}: key 'tracking_uri'")
    ray = sys.modules.get("ray")
    if not address and not (ray is not None and ray.is_initialized()):  # a running Ray is checked once connected
        check_local_resources(settings.resources.cpu, settings.resources.gpu, num_cpus, spec.source)


def check_cluster_resources(cpu: float, gpu: float, nodes: Iterable[Mapping[str, Any]], autoscaler_slots: int, where: str) -> None:
    """On a cluster one trial must fit on one node, alive now or one the autoscaler may launch."""
    if autoscaler_slots > 0:
        return
    largest = {"CPU": 0.0, "GPU": 0.0}
    for node in nodes:
        if not node.get("Alive", True):
            continue
        resources = node.get("Resources", {})
        if resources.get("CPU", 0.0) >= cpu and resources.get("GPU", 0.0) >= gpu:
            return
        largest = max(largest, {"CPU": resources.get("CPU", 0.0), "GPU": resources.get("GPU", 0.0)}, key=lambda r: (r["GPU"], r["CPU"]))
    raise ConfigError(
        f"{where}: key 'resources': a trial asks for {cpu:g} CPUs and {gpu:g} GPUs, but no node of the cluster offers "
        f"that (the largest has {largest['CPU']:g} CPUs, {largest['GPU']:g} GPUs) and no autoscaler node type does"
    )
