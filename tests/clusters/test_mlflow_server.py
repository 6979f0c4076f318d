"""clusters/mlflow_server.sh, the head's MLflow server: run again and again (as every `ray up` does), from a fresh
home and over a stale pid file, it leaves exactly one live server that answers /health, and stop ends it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
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
    # The watcher follows this test process, not whichever Ray head of this user happens to run on the machine.
    env = {**os.environ, "HOME": str(home), "MLFLOW_PORT": str(free_port()), "MLFLOW_WORKERS": "1",
           "MLFLOW_START_TIMEOUT_S": "240", "MLFLOW_STOP_WITH_PID": str(os.getpid())}
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


FAKE_MLFLOW = """#!{python}
# A stand-in for `mlflow server`: answers /health on --port at once, as the real one does after a minute's start.
import http.server
import sys
port = int(sys.argv[sys.argv.index("--port") + 1])


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


def process_state(pid: int) -> str:
    """The state letter from /proc/<pid>/stat ('' once the pid is gone): Z for an ended but unreaped process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def test_the_watcher_stops_the_server_when_the_ray_head_ends_even_unreaped(tmp_path: Path) -> None:
    """`ray down` runs only `ray stop` on the head; the watcher left by start must then stop the server. The GCS
    that `ray start` leaves behind is an orphan: under a pid 1 that never reaps (a container's, the rehearsal's pid
    namespace) it stays a zombie once killed, which `tail --pid` takes for alive. Here the stand-in GCS is this test's
    child, killed and deliberately not reaped."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mlflow").write_text(FAKE_MLFLOW.format(python=sys.executable))
    (bin_dir / "mlflow").chmod(0o755)
    gcs_binary = bin_dir / "gcs_server"  # named as Ray's, so the watcher sees the name it started with
    shutil.copy("/bin/sleep", gcs_binary)
    gcs = subprocess.Popen([str(gcs_binary), "600"])
    home = tmp_path / "home"
    port = free_port()
    env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}", "MLFLOW_PORT": str(port),
           "MLFLOW_START_TIMEOUT_S": "60", "MLFLOW_STOP_WITH_PID": str(gcs.pid)}
    pid_file, watcher_file = home / "mlflow-server.pid", home / "mlflow-server.watcher.pid"
    try:
        started = run(env, "start", "sqlite:///x.db", str(tmp_path / "a"), tmp_path=tmp_path)
        assert started.returncode == 0, started.stderr
        assert f"stops when process {gcs.pid} (gcs_server) ends" in started.stdout
        server = int(pid_file.read_text())
        watcher = int(watcher_file.read_text())
        assert alive(server) and healthy(port)
        time.sleep(2)  # the watcher has had time to look at a live head: it must leave the server running
        assert alive(server) and healthy(port) and process_state(watcher) not in ("", "Z")

        os.kill(gcs.pid, signal.SIGKILL)  # what `ray stop` does to the GCS in the end; nobody reaps it
        deadline = time.monotonic() + 30
        while process_state(gcs.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process_state(gcs.pid) == "Z"
        deadline = time.monotonic() + 60  # the watcher looks once a second, stop waits up to 10 s before KILL
        while (alive(server) or pid_file.exists()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(server) and not pid_file.exists() and not watcher_file.exists()
        assert not healthy(port) and process_state(gcs.pid) == "Z"  # stopped while the head was still a zombie
        assert run(env, "status", tmp_path=tmp_path).returncode == 3
    finally:
        gcs.kill()
        gcs.wait()
        run(env, "stop", tmp_path=tmp_path)


def test_a_late_watcher_of_an_old_head_leaves_the_newer_server_alone(tmp_path: Path) -> None:
    """The next `ray up` restarts the head, then the server: a watcher of the old head that fires late (after the
    new start) must not stop the new server, which the pid file now names; the new head's end stops it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mlflow").write_text(FAKE_MLFLOW.format(python=sys.executable))
    (bin_dir / "mlflow").chmod(0o755)
    old_head, new_head = subprocess.Popen(["sleep", "600"]), subprocess.Popen(["sleep", "600"])
    home = tmp_path / "home"
    env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}", "MLFLOW_PORT": str(free_port()),
           "MLFLOW_START_TIMEOUT_S": "60"}
    pid_file = home / "mlflow-server.pid"
    try:
        first = run({**env, "MLFLOW_STOP_WITH_PID": str(old_head.pid)}, "start", "sqlite:///x.db",
                    str(tmp_path / "a"), tmp_path=tmp_path)
        assert first.returncode == 0, first.stderr
        old_server = int(pid_file.read_text())
        # A watcher of the old head and server that outlives the next start (whose stop ends only the recorded one).
        late = subprocess.Popen(["bash", str(SCRIPT), "watch", str(old_head.pid), str(old_server)], env=env)
        second = run({**env, "MLFLOW_STOP_WITH_PID": str(new_head.pid)}, "start", "sqlite:///x.db",
                     str(tmp_path / "a"), tmp_path=tmp_path)
        assert second.returncode == 0, second.stderr
        new_server = int(pid_file.read_text())
        assert new_server != old_server and not alive(old_server) and alive(new_server)

        old_head.kill()
        old_head.wait()
        assert late.wait(timeout=30) == 0  # the old head is gone: the late watcher has looked and returned
        assert alive(new_server) and int(pid_file.read_text()) == new_server

        new_head.kill()  # left unreaped, as above
        deadline = time.monotonic() + 60
        while alive(new_server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(new_server) and not pid_file.exists()
    finally:
        for head in (old_head, new_head):
            head.kill()
            head.wait()
        run(env, "stop", tmp_path=tmp_path)
