"""Every clusters/*.yaml passes Ray's own config preparation and schema offline (no cloud account needed), broken
copies are rejected, no credentials are written in them, and the nodes install the client's Ray version."""

from __future__ import annotations

import copy
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.local.config import bootstrap_local
from ray.autoscaler._private.util import prepare_config, validate_config

from fishr_tune.sweep.cluster import autoscaling_slots
from fishr_tune.sweep.spec import build_spec

CLUSTERS = Path(__file__).resolve().parents[2] / "clusters"
CONFIG_FILES = sorted(CLUSTERS.glob("*.yaml"))
CLOUD_FILES = [p for p in CONFIG_FILES if p.stem in ("aws", "gcp")]
RAY_PIN = re.compile(r"ray\[[a-z,]+\]==([0-9][0-9A-Za-z.]*)")
SECRET_KEY = re.compile(r"(secret|password|passwd|token|access_key|credential|private_key_data)", re.IGNORECASE)
SECRET_VALUE = re.compile(r"(AKIA|ASIA)[A-Z0-9]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----|ghp_[A-Za-z0-9]{20,}")


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def prepared(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does before touching a cloud: merge Ray's defaults, check the schema (and bootstrap a local one)."""
    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    if config["provider"]["type"] == "local":
        config = bootstrap_local(config)
    return config


def test_every_provider_has_a_config() -> None:
    assert {p.stem for p in CONFIG_FILES} == {"aws", "gcp", "local"}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_passes_rays_preparation_and_schema(path: Path) -> None:
    config = prepared(load(path))
    # The repository, and Ray's auth token by its path on the user's machine (token authentication stays on).
    assert config["file_mounts"] == {"~/fishr-tune": ".", "~/.ray/auth_token": "~/.ray/auth_token"}
    # Setup installs the uploaded repository on every node (the setup commands are merged into each node's list),
    # into the venv that node_env.sh creates first, never into the system Python (PEP 668 refuses it).
    for commands in (config["head_setup_commands"], config["worker_setup_commands"]):
        assert commands[0] == "bash ~/fishr-tune/clusters/node_env.sh"
        assert any("~/fishr-tune-venv/bin/python -m pip install -e ~/fishr-tune" in c for c in commands)
        assert not any(re.search(r"(^|\s)python3 -m pip|--user", c) for c in commands)
    node_types = config["available_node_types"]
    assert config["head_node_type"] in node_types


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_nodes_install_the_clients_ray_version(path: Path) -> None:
    pins = RAY_PIN.findall(" ".join(load(path)["setup_commands"]))
    assert pins and set(pins) == {ray.__version__}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_head_offers_no_cpu_to_trials(path: Path) -> None:
    config = prepared(load(path))
    head = config["available_node_types"][config["head_node_type"]]
    if config["provider"]["type"] == "local":  # one node type for all machines: the head's ray start says it
        assert any("--head" in c and "--num-cpus=0" in c for c in config["head_start_ray_commands"])
    else:
        assert head["resources"] == {"CPU": 0} and head["max_workers"] == 0


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_mlflow_server_starts_on_the_head_through_the_script(path: Path) -> None:
    """One start command, by the idempotent script (which binds 127.0.0.1 unless MLFLOW_HOST says otherwise)."""
    config = load(path)
    servers = [c for c in config["head_start_ray_commands"] if "mlflow" in c]
    assert servers == [c for c in servers if c.startswith("bash ~/fishr-tune/clusters/mlflow_server.sh start sqlite:///")]
    assert len(servers) == 1 and "MLFLOW_HOST" not in servers[0]
    assert config["head_start_ray_commands"][-1] == servers[0]  # after `ray start`: its watcher follows the head
    others = config["worker_start_ray_commands"] + config["setup_commands"] + config["initialization_commands"]
    assert not any("mlflow" in c for c in others)
    script = (CLUSTERS / "mlflow_server.sh").read_text(encoding="utf-8")
    assert 'host="${MLFLOW_HOST:-127.0.0.1}"' in script


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_requirements_are_checked_before_anything_is_uploaded_or_installed(path: Path) -> None:
    """initialization_commands run before Ray's rsync of file_mounts and before setup: rsync and python3-venv,
    and the shared directory where the sweeps live on one (local, gcp), each named in a one-line message."""
    config = load(path)
    check = config["initialization_commands"][0]
    assert "command -v rsync" in check and "import ensurepip" in check and "exit 1" in check
    if "/mnt/fishr-tune" in " ".join(config["head_start_ray_commands"]):
        assert any("/mnt/fishr-tune" in c for c in config["initialization_commands"])
        assert not any("/mnt/fishr-tune" in c for c in config["setup_commands"])


def test_the_requirements_check_names_what_is_missing(tmp_path: Path) -> None:
    """local.yaml's check, run by bash with no rsync on PATH and no shared directory: exit 1 and one line naming both."""
    check = load(CLUSTERS / "local.yaml")["initialization_commands"][0]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    (bin_dir / "hostname").write_text("#!/bin/sh\necho node-a\n")
    (bin_dir / "hostname").chmod(0o755)
    shared = "/mnt/fishr-tune"
    done = subprocess.run(["/bin/bash", "-c", check.replace(shared, str(tmp_path / "absent"))],
                          env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fishr-tune: node-a lacks: rsync")
    assert "python3-venv" not in lines[0].split("(")[0]  # this Python has ensurepip
    assert f"the-shared-directory-{tmp_path / 'absent'}" in lines[0]


def test_gcp_gpu_workers_get_and_wait_for_the_nvidia_driver() -> None:
    config = prepared(load(CLUSTERS / "gcp.yaml"))
    for name, node_type in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue
        items = node_type["node_config"]["metadata"]["items"]
        assert {"key": "install-nvidia-driver", "value": "True"} in items
    assert any("nvidia-smi" in c for c in config["worker_setup_commands"])
    assert not any("nvidia-smi" in c for c in config["head_setup_commands"])


@pytest.mark.parametrize("path", CLOUD_FILES, ids=lambda p: p.stem)
def test_cloud_gpu_workers_scale_from_zero_in_spot_and_on_demand(path: Path) -> None:
    config = prepared(load(path))
    assert config["idle_timeout_minutes"] > 0
    workers = {n: t for n, t in config["available_node_types"].items() if n != config["head_node_type"]}
    assert all(t["min_workers"] == 0 and t["resources"]["GPU"] >= 1 for t in workers.values())
    assert {t["resources"]["GPU"] for t in workers.values()} == {1, 4}

    def is_spot(node_config: dict[str, Any]) -> bool:
        aws = node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        return aws or node_config.get("scheduling", {}).get("provisioningModel") == "SPOT"

    for gpus in (1, 4):
        kinds = {is_spot(t["node_config"]) for t in workers.values() if t["resources"]["GPU"] == gpus}
        assert kinds == {True, False}, f"{gpus}-GPU workers need a spot and an on-demand type"


def test_aws_workers_are_g5_instances_with_an_instance_profile() -> None:
    config = prepared(load(CLUSTERS / "aws.yaml"))
    types = {t["node_config"]["InstanceType"] for n, t in config["available_node_types"].items() if n != "head"}
    assert types == {"g5.xlarge", "g5.12xlarge"}
    for node_type in config["available_node_types"].values():
        assert node_type["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")


def walk(value: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in [(f"{path}.{k}", k), *walk(v, f"{path}.{k}")]]
    if isinstance(value, list):
        return [item for i, v in enumerate(value) for item in walk(v, f"{path}[{i}]")]
    return [(path, value)]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_no_credentials_in_the_file(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not SECRET_VALUE.search(text)
    for where, value in walk(load(path)):
        if where == ".file_mounts.~/.ray/auth_token" or where.startswith(".file_mounts.~/.ray/auth_token"):
            assert value in ("~/.ray/auth_token",)  # a path on the user's machine, never the token itself
            continue
        if isinstance(value, str):
            assert not SECRET_KEY.search(where.rsplit(".", 1)[-1]), f"{path.name}: {where} looks like a credential"
    # An SSH key is referenced by its path on the user's machine, never inlined.
    auth = load(path).get("auth", {})
    assert set(auth) <= {"ssh_user", "ssh_private_key"}
    assert str(auth.get("ssh_private_key", "~/")).startswith("~/")


def test_the_credential_check_catches_a_leaked_key() -> None:
    leaked = "aws_secret_access_key: abc\nkey: AKIAABCDEFGHIJKLMNOP\n"
    assert SECRET_VALUE.search(leaked) and SECRET_KEY.search("aws_secret_access_key")


@pytest.mark.parametrize(
    ("path", "break_it", "message"),
    [
        ("aws.yaml", lambda c: c.update(max_workers="eight"), "is not of type 'integer'"),
        ("aws.yaml", lambda c: c.update(idle_timeout_mins=5), "Additional properties are not allowed"),
        ("gcp.yaml", lambda c: c["available_node_types"]["gpu1_spot"].pop("node_config"), "'node_config' is a required"),
        ("gcp.yaml", lambda c: c["available_node_types"]["gpu1_spot"]["resources"].update(GPU=-1), "less than the minimum"),
        ("aws.yaml", lambda c: c.update(head_node_type="cpu_head"), "head_node_type` must be one of"),
        ("local.yaml", lambda c: c.update(head_start_ray_commands="ray start --head"), "is not of type 'array'"),
    ],
    ids=["wrong type", "unknown top-level key", "node type without node_config", "negative GPUs", "bad head type",
         "commands not a list"],
)
def test_broken_copies_are_rejected(path: str, break_it: Any, message: str) -> None:
    config = load(CLUSTERS / path)
    prepared(config)  # the original passes
    break_it(config)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=re.escape(message)):
        prepared(config)


# ---- the launcher script (what `ray submit` runs) ----

def launcher() -> Any:
    spec = importlib.util.spec_from_file_location("launch_sweep", CLUSTERS / "launch_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launcher_finds_a_spec_relative_to_the_installed_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = launcher()
    monkeypatch.chdir(tmp_path)  # `ray submit` runs the script from the head's home, not from the repository
    args = module.sweep_arguments(["--num-samples", "2", "search_spaces/quickstart.yaml", "--resume"])
    expected = str(CLUSTERS.parent / "search_spaces" / "quickstart.yaml")
    assert args == ["sweep", "--num-samples", "2", expected, "--resume", "--address", "auto"]
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "quickstart.yaml").write_text("name: mine\n")
    assert module.sweep_arguments(["search_spaces/quickstart.yaml"])[1] == "search_spaces/quickstart.yaml"


def test_launcher_keeps_a_given_address(monkeypatch: pytest.MonkeyPatch) -> None:
    module = launcher()
    assert module.sweep_arguments(["/abs/x.yaml", "--address", "10.0.0.1:6379"])[-2:] == ["--address", "10.0.0.1:6379"]
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    assert module.sweep_arguments(["/abs/x.yaml"])[-2:] == ["--address", "10.0.0.2:6379"]


# ---- trial concurrency from the autoscaler's config ----

SPEC = {"name": "s", "dataset": "ColoredMNIST-IRM", "algorithms": ["ERM"], "scheduler": "none"}


@pytest.mark.parametrize(("cpu", "gpu", "slots"),
                         [(8, 1, 2 * 4 + 1 * 4), (1, 0.5, 8 * 2 + 2 * 2 + 2 * 8 + 1 * 8), (4, 1, 8 + 2 + 2 * 4 + 4)])
def test_autoscaling_slots_count_trials_on_the_largest_cluster(tmp_path: Path, cpu: float, gpu: float, slots: int) -> None:
    """aws.yaml: gpu1 types (4 CPU, 1 GPU) x 8 + 2, gpu4 types (48 CPU, 4 GPU) x 2 + 1; the head adds nothing."""
    config_file = tmp_path / "ray_bootstrap_config.yaml"
    config_file.write_text(yaml.safe_dump(prepared(load(CLUSTERS / "aws.yaml"))))
    spec = build_spec({**SPEC, "resources": {"cpu": cpu, "gpu": gpu}}, "t.yaml")
    assert autoscaling_slots(spec, str(config_file)) == slots
    assert autoscaling_slots(spec, str(tmp_path / "absent.yaml")) == 0
