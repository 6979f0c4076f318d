"""Shared fixtures: session-wide HOME/Ray isolation, the full MNIST when present (skip cleanly otherwise), a real
MLflow server, a local Ray and a tiny sweep."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

FAULTS_ENV = "FISHR_TUNE_TEST_FAULTS"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
_SCRATCH = Path(f"/tmp/fishr-tune-tests-{os.getpid()}")


def pytest_configure(config: pytest.Config) -> None:
    """One HOME and Ray temp dir for the whole session, set before anything starts Ray.

    A local ray.init() writes ~/.ray/auth_token and the process caches it: a second init under another HOME
    would start a cluster whose token the driver no longer holds. Tests must therefore not change HOME.
    The Ray dir is short because Ray's socket paths must stay under 108 bytes. Torch runs one thread: the
    tests' models are tiny, and spinning OpenMP threads only fight the Ray workers for the 2 cores.
    """
    for sub in ("home", "ray"):
        (_SCRATCH / sub).mkdir(parents=True, exist_ok=True)
    os.environ["HOME"] = str(_SCRATCH / "home")
    os.environ["RAY_TMPDIR"] = str(_SCRATCH / "ray")
    torch.set_num_threads(1)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_SCRATCH, ignore_errors=True)


def shared_mnist_available() -> bool:
    raw = SHARED_DATA / "MNIST" / "raw"
    return all((raw / name).exists() for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"))


@pytest.fixture
def full_mnist_dir() -> Path:
    """Directory with the genuine MNIST (torchvision layout); tests that need it skip when it is absent."""
    if not shared_mnist_available():
        pytest.skip(f"full MNIST not found under {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their data source explicitly; a developer's $FISHR_TUNE_DATA must not leak in."""
    monkeypatch.delenv("FISHR_TUNE_DATA", raising=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with an sqlite backend, which tests stop and start again."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> None:
        command = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}", "--artifacts-destination", str(self.root / "artifacts"),
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a loaded machine: the server's workers may outlive the grace period
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
            self.process = None


def last_module_using(request: pytest.FixtureRequest, fixture: str) -> bool:
    """Whether no test after this module needs `fixture`: shared servers stop there, not at the session's end,
    so the tests after them run on a machine without them (some assert that no Ray is running)."""
    items = request.session.items
    mine = [i for i, item in enumerate(items) if item.module is request.module]
    return not any(fixture in item.fixturenames for item in items[(mine[-1] + 1) if mine else 0:])


_SHARED: dict[str, Any] = {}


@pytest.fixture(scope="module")
def mlflow_server(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[MlflowServer]:
    """One server for every module that needs one (starting one takes ~10 s); tests name their experiments
    apart. A module that stopped it (an outage test) hands it on running."""
    server = _SHARED.get("mlflow")
    if server is None:
        server = _SHARED["mlflow"] = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    if server.process is None:
        server.start()
    yield server
    if last_module_using(request, "mlflow_server"):
        if server.process is not None:  # the end of the session, not an outage: no grace period to wait out
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=30)
            server.process = None
        del _SHARED["mlflow"]


TINY_SWEEP: dict[str, Any] = {
    "dataset": "ColoredMNIST-IRM",
    "algorithms": ["ERM", "Fishr"],
    "test_envs": [2],
    "trial_seeds": [0],
    "steps": 120,
    "checkpoint_freq": 40,
    "hyperparameters": {"lr": {"loguniform": [1.0e-3, 3.0e-3]}, "batch_size": 32, "hidden_dim": 64},
    "per_algorithm": {"Fishr": {"lambda": {"loguniform": [10.0, 1000.0]}, "penalty_anneal_iters": 40}},
    "search": {"algorithm": "tpe", "num_samples": 2, "seed": 0},
    "scheduler": "none",
    "resources": {"cpu": 1},
    "max_failures": 1,
}


@pytest.fixture(scope="session")
def _mlflow_db_template() -> Path:
    from mlflow.tracking import MlflowClient

    path = _SCRATCH / "mlflow-template.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def sqlite_uri(tmp_path: Path, _mlflow_db_template: Path) -> str:
    """`sqlite:///<tmp_path>/mlflow.db`, its tables made: a copy of a database made once a session, as MLflow's
    migrations take a second or more for each new database."""
    shutil.copyfile(_mlflow_db_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def tiny_sweep(tmp_path: Path, sqlite_uri: str) -> dict[str, Any]:
    """Settings of a 4-trial sweep (ERM and Fishr, 2 configurations each, 120 steps) stored under tmp_path."""
    import copy

    return {**copy.deepcopy(TINY_SWEEP), "storage_path": str(tmp_path / "sweeps"), "tracking_uri": sqlite_uri}


@pytest.fixture(scope="module")
def local_ray(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A 2-CPU local Ray (HOME and RAY_TMPDIR are isolated for the session by pytest_configure); yields a
    directory where fault-injecting trainables leave their marks, empty at each module's start.

    Consecutive modules share one Ray (starting and stopping one takes ~5 s); it stops after the last module
    that needs it. The marks directory is fixed while Ray runs: its workers inherit the environment it started in.
    """
    import ray

    if not ray.is_initialized():
        scratch = Path(tempfile.mkdtemp(prefix="rsw", dir="/tmp"))
        (scratch / "faults").mkdir()
        _SHARED["ray"] = (scratch, os.environ.get(FAULTS_ENV))
        os.environ[FAULTS_ENV] = str(scratch / "faults")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    scratch, saved = _SHARED["ray"]
    faults = scratch / "faults"
    for mark in faults.iterdir():
        if mark.is_dir():
            shutil.rmtree(mark)
        else:
            mark.unlink()
    try:
        yield faults
    finally:
        if last_module_using(request, "local_ray"):
            ray.shutdown()
            if saved is None:
                os.environ.pop(FAULTS_ENV, None)
            else:
                os.environ[FAULTS_ENV] = saved
            shutil.rmtree(scratch, ignore_errors=True)
            del _SHARED["ray"]
