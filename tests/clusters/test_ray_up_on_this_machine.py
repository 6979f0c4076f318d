"""The cluster path as a user walks it, rehearsed on this machine: an sshd on 127.0.0.1 with a generated key, a
fresh user as the "head", clusters/local.yaml as shipped with only its REPLACE_ME values filled in (and the
README's one-machine change: the head runs trials), then `ray up`, `ray submit --tmux` of a quickstart-sized
sweep to its end, `fishr-tune analyze` through `ray exec`, `ray down`; MLflow on the head must hold one parent
run and one run per trial, and `ray down` must have stopped the head's MLflow server.

`ray up` and `ray down` run `ray stop` on the head, which ends every Ray process it can see: the scenario runs in
its own pid namespace (`unshare --pid --fork --mount-proc`, this file re-executed), where the shared directory
/mnt/fishr-tune is a bind mount of a scratch folder. Needs root, openssh-server, rsync, tmux and python3-venv;
skips, saying what is missing, without them. Takes 10-30 minutes (the head's venv install is most of it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
USER = "fishr-rehearsal"
SHARED = Path("/mnt/fishr-tune")
SWEEP = "rehearsal"
MARK = "REHEARSAL "


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def missing_requirements() -> list[str]:
    missing = [tool for tool in ("unshare", "ssh-keygen", "rsync", "tmux", "useradd") if not shutil.which(tool)]
    if not Path("/usr/sbin/sshd").exists():
        missing.append("openssh-server (/usr/sbin/sshd)")
    check = subprocess.run(["/usr/bin/python3", "-c", "import ensurepip"], capture_output=True, env={"PATH": "/usr/bin"})
    if check.returncode != 0:
        missing.append("python3-venv")
    if os.geteuid() != 0:
        missing.append("root (to add the head's user and start sshd)")
    missing += [f"a free 127.0.0.1:{port}" for port in (22, 6379) if port_in_use(port)]
    return missing


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_ray_up_submit_analyze_down_on_this_machine() -> None:
    missing = missing_requirements()
    if missing:
        pytest.skip("the cluster rehearsal needs " + ", ".join(missing))
    scratch = Path(tempfile.mkdtemp(prefix="fishr-rehearsal-", dir="/tmp"))
    scratch.chmod(0o755)
    started = time.monotonic()
    made_ray_tmp = not Path("/tmp/ray").exists()  # the scenario's mount point; removed again if it makes it
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, __file__, str(scratch)],
            capture_output=True, text=True, timeout=3500, cwd=REPO,
        )
    finally:
        subprocess.run(["userdel", USER], capture_output=True)
        if made_ray_tmp and Path("/tmp/ray").is_dir() and not any(Path("/tmp/ray").iterdir()):  # never another Ray's
            Path("/tmp/ray").rmdir()
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-8000:]
    report = json.loads(next(line[len(MARK):] for line in done.stdout.splitlines() if line.startswith(MARK)))
    print(f"rehearsal: {report} (test {time.monotonic() - started:.0f} s)")
    assert report["parent_runs"] == 1
    assert report["trial_runs"] == report["trials"] == 2 and report["finished"] + report["stopped_early"] == 2
    assert report["mlflow_server_after_down"] == []
    shutil.rmtree(scratch, ignore_errors=True)


# ---- the scenario, run as pid 1 of its own pid namespace ----

def sh(*args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    done = subprocess.run(list(args), capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)[:300]} exited {done.returncode}:\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}")
    return done


def filled_local_yaml(key: str) -> dict[str, Any]:
    """clusters/local.yaml with its REPLACE_ME values filled in, plus the one-machine change (README)."""
    config = yaml.safe_load((REPO / "clusters" / "local.yaml").read_text(encoding="utf-8"))
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"] = {"ssh_user": USER, "ssh_private_key": key}
    config["head_start_ray_commands"] = [c.replace(" --num-cpus=0", "") for c in config["head_start_ray_commands"]]
    return config


def mlflow_servers(port: int) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "mlflow server" in text and f"--port {port} " in text:
            found.append(int(cmdline.parent.name))
    return found


def scenario(scratch: Path) -> dict[str, Any]:
    timings: dict[str, float] = {}
    home, client, shared = scratch / "home", scratch / "client", scratch / "shared"
    for folder in (client / ".ssh", shared, scratch / "sshd"):
        folder.mkdir(parents=True)
    # The head's user: a fresh home from /etc/skel, as `adduser` makes it (Debian's .bashrc, .profile).
    if subprocess.run(["id", USER], capture_output=True).returncode == 0:
        sh("usermod", "--home", str(home), USER)
    else:
        sh("useradd", "--home-dir", str(home), "--shell", "/bin/bash", "--user-group", USER)
    sh("usermod", "--password", "*", USER)  # no password to log in with, but not locked: sshd admits its key
    shutil.copytree("/etc/skel", home)
    key = client / ".ssh" / "id_ed25519"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    (home / ".ssh").mkdir()
    shutil.copy(f"{key}.pub", home / ".ssh" / "authorized_keys")
    mlflow_port = free_port()
    # The head's MLflow port: 5000 may be taken on this shared machine; the script reads MLFLOW_PORT.
    with open(home / ".bashrc", "a") as bashrc:
        bashrc.write(f"export MLFLOW_PORT={mlflow_port} MLFLOW_START_TIMEOUT_S=600  # a busy test machine\n")
    sh("chown", "-R", f"{USER}:{USER}", str(home), str(shared))
    # The shared directory, as an NFS mount would be: here a bind mount seen only in this namespace.
    SHARED.mkdir(parents=True, exist_ok=True)
    sh("mount", "--bind", str(shared), str(SHARED))

    host_key = scratch / "sshd" / "host_key"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key))
    (scratch / "sshd" / "config").write_text(
        f"ListenAddress 127.0.0.1\nPort 22\nHostKey {host_key}\nPidFile {scratch / 'sshd' / 'pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"AllowUsers {USER}\nAuthorizedKeysFile .ssh/authorized_keys\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(scratch / "sshd" / "config")],
                            stdout=subprocess.DEVNULL, stderr=open(scratch / "sshd" / "log", "w"))
    deadline = time.monotonic() + 30
    while not port_in_use(22):
        if sshd.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("sshd did not start: " + (scratch / "sshd" / "log").read_text())
        time.sleep(0.2)

    config_file = client / "local.yaml"
    config_file.write_text(yaml.safe_dump(filled_local_yaml(str(key)), sort_keys=False))
    venv_bin = str(Path(sys.executable).parent)
    env = {"HOME": str(client), "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "RAY_USAGE_STATS_ENABLED": "0"}
    sh("ray", "get-auth-token", "--generate", env=env, cwd=REPO)  # ~/.ray/auth_token, which file_mounts upload
    ray = ["ray"]
    # /tmp/ray of a fresh machine, seen only in this namespace: the client (root here) keeps the local provider's
    # node record there and the head's user its session dirs, and another root Ray on this machine may have made
    # the real one root's alone (the head's `ray start` then fails with Permission denied).
    ray_tmp = scratch / "tmp-ray"
    ray_tmp.mkdir()
    ray_tmp.chmod(0o1777)
    Path("/tmp/ray").mkdir(exist_ok=True)
    sh("mount", "--bind", str(ray_tmp), "/tmp/ray")

    def timed(name: str, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        begin = time.monotonic()
        done = sh(*args, env=env, cwd=REPO, timeout=timeout)
        timings[name] = round(time.monotonic() - begin, 1)
        return done

    try:
        timed("ray_up_s", *ray, "up", "-y", "--no-config-cache", str(config_file), timeout=2400)
        tracking = f"http://127.0.0.1:{mlflow_port}"
        timed("ray_submit_s", *ray, "submit", "--tmux", str(config_file), "clusters/launch_sweep.py",
              "search_spaces/quickstart.yaml", "--name", SWEEP, "--num-samples", "1", "--steps", "300",  # ASHA grace 200 < steps
              "--storage-path", str(SHARED / "sweeps"), "--tracking-uri", tracking)
        summary_file = shared / "sweeps" / SWEEP / "sweep_summary.json"
        begin, deadline = time.monotonic(), time.monotonic() + 1500
        while not summary_file.exists():
            if time.monotonic() > deadline:
                pane = subprocess.run([*ray, "exec", str(config_file), "tmux capture-pane -p -S -200"],
                                      env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
                raise RuntimeError(f"the sweep did not end; its tmux pane:\n{pane.stdout[-6000:]}")
            time.sleep(5)
        timings["sweep_s"] = round(time.monotonic() - begin, 1)
        summary = json.loads(summary_file.read_text())
        analyzed = timed("analyze_s", *ray, "exec", str(config_file),
                         f"fishr-tune analyze --experiment {SWEEP} --tracking-uri {tracking}", timeout=900)
        if "ERM" not in analyzed.stdout or "Fishr" not in analyzed.stdout:
            raise RuntimeError("analyze printed no table:\n" + analyzed.stdout[-4000:])
    finally:
        timed("ray_down_s", *ray, "down", "-y", str(config_file), timeout=600)
    deadline = time.monotonic() + 60
    while mlflow_servers(mlflow_port) and time.monotonic() < deadline:
        time.sleep(1)
    left = mlflow_servers(mlflow_port)

    from mlflow.tracking import MlflowClient

    store = MlflowClient(f"sqlite:///{shared / 'mlflow.db'}")
    experiment = store.get_experiment_by_name(SWEEP)
    if experiment is None:
        raise RuntimeError("no MLflow experiment on the head: " + str([e.name for e in store.search_experiments()]))

    def runs(kind: str) -> int:
        return len(store.search_runs([experiment.experiment_id], filter_string=f"tags.`fishr_tune.kind` = '{kind}'"))

    sshd.terminate()
    return {**timings, "trials": summary["trials"], "finished": summary["finished"],
            "stopped_early": summary["stopped_early"], "parent_runs": runs("sweep"), "trial_runs": runs("trial"),
            "mlflow_server_after_down": left, "analyze_tail": analyzed.stdout.strip().splitlines()[-3:]}


if __name__ == "__main__":
    print(MARK + json.dumps(scenario(Path(sys.argv[1]))), flush=True)
