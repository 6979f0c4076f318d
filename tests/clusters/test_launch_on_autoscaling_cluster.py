"""clusters/launch_sweep.py on an autoscaling Ray cluster that starts with no worker: Ray's fake multi-node provider
(worker nodes are local processes that declare GPUs) stands in for AWS. The head offers no CPU, as in aws.yaml, so
every trial must run on a worker node the autoscaler added for it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fishr_tune import records
from fishr_tune.sweep.trainable import NODE_ID

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "clusters" / "launch_sweep.py"
RAY = str(Path(sys.executable).with_name("ray"))
HEAD_TYPE = "ray.head.default"  # the fake provider's fixed name for the head's node type
WORKER_TYPE = "gpu_worker"
TINY_SWEEP: dict[str, Any] = {
    "name": "on_fake_gpus",
    "dataset": "ColoredMNIST-IRM",
    "algorithms": ["ERM"],
    "test_envs": [2],
    "trial_seeds": [0],
    "steps": 60,
    "checkpoint_freq": 20,
    "hyperparameters": {"lr": {"loguniform": [1.0e-3, 3.0e-3]}, "batch_size": 32, "hidden_dim": 32},
    "search": {"algorithm": "random", "num_samples": 2, "seed": 0},
    "scheduler": "none",
    "resources": {"cpu": 1, "gpu": 1},
    "max_failures": 1,
}


def fake_cluster_config(gcs_address: str) -> dict[str, Any]:
    """A complete autoscaler config (the v1 autoscaler reads it as written): a CPU-less head and up to two
    one-GPU workers, started from zero."""
    return {
        "cluster_name": "fake-gpus",
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        # launch_multiple: the fake provider otherwise starts one node per launch request, whatever the count.
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "launch_multiple": True},
        "auth": {},
        "docker": {},
        "available_node_types": {
            HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "min_workers": 0, "max_workers": 0},
            WORKER_TYPE: {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": HEAD_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc): the fake worker nodes are started by the head's autoscaler."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def stop_cluster(head: subprocess.Popen) -> None:
    """SIGKILL this test's head and everything it started, by process id; other Ray clusters on the machine stay."""
    pids = descendants(head.pid)
    if head.poll() is None:
        os.killpg(head.pid, signal.SIGKILL)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    head.wait(timeout=30)


@pytest.fixture
def autoscaling_cluster() -> Iterator[dict[str, Any]]:
    yield from fake_cluster(fake_cluster_config)


@pytest.fixture
def cluster_without_workers_yet() -> Iterator[dict[str, Any]]:
    """Like an on-premise cluster right after `ray up` returned: the head is up, no worker has joined and the
    autoscaler's config says no node can be added; the test lets the workers join later."""
    def config(gcs_address: str) -> dict[str, Any]:
        values = fake_cluster_config(gcs_address)
        values["max_workers"] = 0
        values["available_node_types"][WORKER_TYPE].update(min_workers=0, max_workers=0)
        return values
    yield from fake_cluster(config)


def fake_cluster(make_config: Any) -> Iterator[dict[str, Any]]:
    scratch = Path(tempfile.mkdtemp(prefix="rfake", dir="/tmp"))
    home, temp = scratch / "home", scratch / "ray"
    home.mkdir()
    temp.mkdir()
    port = free_port()
    address = f"127.0.0.1:{port}"
    config = make_config(address)
    config_file = home / "ray_bootstrap_config.yaml"  # where `ray up` puts it on a real head
    config_file.write_text(yaml.safe_dump(config))
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(HOME=str(home), RAY_TMPDIR=str(temp), RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1", "--num-cpus", "0",
         "--include-dashboard", "false", "--disable-usage-stats", f"--autoscaling-config={config_file}",
         "--temp-dir", str(temp)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or head.poll() is not None:
                    raise RuntimeError("the fake cluster's head did not start") from None
                time.sleep(1)
        yield {"address": address, "env": env, "scratch": scratch, "config_file": config_file}
    finally:
        stop_cluster(head)
        subprocess.run(["rm", "-rf", str(scratch)], check=False)


def alive_nodes(address: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """ray.nodes() of the cluster, asked from a separate driver (this test process never joins the cluster)."""
    script = f"import json, ray; ray.init(address={address!r}, log_to_driver=False); print(json.dumps(ray.nodes()))"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [node for node in json.loads(done.stdout.strip().splitlines()[-1]) if node["Alive"]]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_launcher_sweeps_on_gpu_workers_the_autoscaler_adds(autoscaling_cluster: dict[str, Any], tmp_path: Path) -> None:
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(TINY_SWEEP))
    env = autoscaling_cluster["env"]
    address = autoscaling_cluster["address"]
    before = alive_nodes(address, env)
    assert len(before) == 1 and before[0]["Resources"].get("CPU", 0) == 0  # only the CPU-less head: nothing to run on

    done = subprocess.run(
        [sys.executable, str(LAUNCHER), str(spec_file), "--address", address, "--storage-path", str(tmp_path / "sweeps"),
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        cwd=autoscaling_cluster["scratch"], env=env, capture_output=True, text=True, timeout=800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 trials: 2 finished" in done.stdout

    nodes = alive_nodes(address, env)
    head = [n["NodeID"] for n in nodes if n["Resources"].get("GPU", 0) == 0]
    workers = {n["NodeID"] for n in nodes if n["Resources"].get("GPU", 0) == 1}
    assert len(head) == 1
    # Two trials could run at once (one GPU each), so the autoscaler was asked for, and added, two GPU workers.
    assert len(workers) == 2

    rows = []
    for result_file in (tmp_path / "sweeps" / TINY_SWEEP["name"]).glob("*/result.json"):
        rows += [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
    assert {row[records.STEP] for row in rows} == {0, 20, 40, 59}
    trial_nodes = {row[NODE_ID] for row in rows}
    assert trial_nodes and trial_nodes <= workers  # every record came from a worker node, none from the head


def trial_spans(experiment: Path) -> dict[str, tuple[float, float, set[str]]]:
    """Per trial: when it started and ended (from its results' timestamps and times) and the nodes it ran on."""
    spans = {}
    for result_file in experiment.glob("*/result.json"):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if rows:
            start = rows[0]["timestamp"] - rows[0]["time_total_s"]
            spans[rows[0]["trial_id"]] = (start, rows[-1]["timestamp"], {row[NODE_ID] for row in rows})
    return spans


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_trials_in_flight_grow_when_workers_join_after_submit(cluster_without_workers_yet: dict[str, Any],
                                                              tmp_path: Path) -> None:
    """The launcher starts while the cluster has no worker and its config promises none (what the local provider
    looks like when `ray submit` follows `ray up` at once); two one-GPU workers join once the sweep runs. Trials
    must then run two at a time, on both: a concurrency computed at submit time would stay at one."""
    cluster = cluster_without_workers_yet
    spec = {**TINY_SWEEP, "name": "joined_later", "steps": 1000, "checkpoint_freq": 100,
            "search": {"algorithm": "random", "num_samples": 4, "seed": 0}}
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    experiment = tmp_path / "sweeps" / spec["name"]
    sweep = subprocess.Popen(
        [sys.executable, str(LAUNCHER), str(spec_file), "--address", cluster["address"], "--storage-path",
         str(tmp_path / "sweeps"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        cwd=cluster["scratch"], env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (experiment / "sweep_spec.yaml").exists():  # the driver has read the cluster and built its Tuner
            assert sweep.poll() is None and time.monotonic() < deadline, sweep.stdout.read() if sweep.poll() is not None else "slow"
            time.sleep(1)
        time.sleep(5)
        assert not trial_spans(experiment)  # nothing could run yet
        # The workers join: the autoscaler reads its config again on every update and starts them.
        config = yaml.safe_load(cluster["config_file"].read_text())
        config["max_workers"] = 2
        config["available_node_types"][WORKER_TYPE].update(min_workers=2, max_workers=2)
        cluster["config_file"].write_text(yaml.safe_dump(config))
        output, _ = sweep.communicate(timeout=800)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, output[-4000:]
    assert "4 trials: 4 finished" in output, output[-4000:]

    spans = trial_spans(experiment)
    assert len(spans) == 4
    nodes = set().union(*(n for _, _, n in spans.values()))
    joined = {n["NodeID"]: n["Resources"] for n in alive_nodes(cluster["address"], cluster["env"])}
    assert len(nodes) == 2, (spans, joined)  # both workers ran trials
    # and two trials were in flight at once, for longer than the timestamps' one-second resolution blurs
    overlaps = [min(a[1], b[1]) - max(a[0], b[0]) for i, a in enumerate(spans.values())
                for j, b in enumerate(spans.values()) if i < j]
    assert max(overlaps) > 3.0, spans
