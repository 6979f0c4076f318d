"""clusters/mlflow_server.sh, the head's MLflow server: run again and again (as every `ray up` does), from a fresh
home and over a stale pid file, it leaves exactly one live server that answers /health, and stop ends it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "clusters" / "mlflow_server.sh"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        return "mlflow server" in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False


def servers_on(port: int) -> list[int]:
    """Pids of MLflow server processes (the parent, not its workers) listening on `port`, from /proc."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(words).decode(errors="replace")
        if "mlflow server" in text and f"--port {port} " in text:
            found.append(int(cmdline.parent.name))
    return found


@pytest.fixture
def server_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "MLFLOW_PORT": str(free_port()), "MLFLOW_WORKERS": "1",
           "MLFLOW_START_TIMEOUT_S": "240"}
    yield env
    subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def run(env: dict[str, str], *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_start_is_idempotent_and_survives_a_stale_pid_file(server_env: dict[str, str], tmp_path: Path) -> None:
    env, port = server_env, int(server_env["MLFLOW_PORT"])
    home = Path(env["HOME"])
    store, artifacts = f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts")
    pid_file = home / "mlflow-server.pid"

    first = run(env, "start", store, artifacts, tmp_path=tmp_path)  # a fresh home: no pid file, no log
    assert first.returncode == 0, first.stderr
    first_pid = int(pid_file.read_text())
    assert alive(first_pid) and healthy(port) and servers_on(port) == [first_pid]

    again = run(env, "start", store, artifacts, tmp_path=tmp_path)  # what the next `ray up` does
    assert again.returncode == 0, again.stderr
    second_pid = int(pid_file.read_text())
    assert second_pid != first_pid and not alive(first_pid)
    assert healthy(port) and servers_on(port) == [second_pid]

    # A stale pid file: the server died without the script (a reboot, kill -9), and its pid now belongs to an
    # unrelated process, which must survive the next start.
    os.killpg(second_pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while servers_on(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    bystander = subprocess.Popen(["sleep", "600"])
    try:
        pid_file.write_text(f"{bystander.pid}\n")
        third = run(env, "start", store, artifacts, tmp_path=tmp_path)
        assert third.returncode == 0, third.stderr
        assert bystander.poll() is None  # not killed: it is no MLflow server
        third_pid = int(pid_file.read_text())
        assert healthy(port) and servers_on(port) == [third_pid]
        assert run(env, "status", tmp_path=tmp_path).returncode == 0
    finally:
        bystander.kill()

    stopped = run(env, "stop", tmp_path=tmp_path)
    assert stopped.returncode == 0 and not pid_file.exists()
    assert not healthy(port) and servers_on(port) == []
    assert run(env, "status", tmp_path=tmp_path).returncode == 3


def test_start_fails_loudly_when_the_server_cannot_start(tmp_path: Path) -> None:
    """A server that exits at once (here: an mlflow that fails): exit 1, the log's tail on stderr, no pid file left."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mlflow").write_text("#!/bin/sh\necho 'Error: no such backend store' >&2\nexit 3\n")
    (bin_dir / "mlflow").chmod(0o755)
    home = tmp_path / "home"
    env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}", "MLFLOW_PORT": str(free_port())}
    done = run(env, "start", "sqlite:///x.db", str(tmp_path / "a"), tmp_path=tmp_path)
    assert done.returncode == 1
    assert "did not answer" in done.stderr and "Error: no such backend store" in done.stderr
    assert not (home / "mlflow-server.pid").exists()
    usage = run(env, "start", tmp_path=tmp_path)
    assert usage.returncode == 2 and "usage" in usage.stderr
