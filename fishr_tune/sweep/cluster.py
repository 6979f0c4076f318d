"""Sizing a sweep to its cluster: how many trials fit now or on the largest cluster the autoscaler may build, how
many Tune keeps pending, and whether one trial fits at all."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fishr_tune.errors import ConfigError
from fishr_tune.sweep.preflight import check_cluster_resources
from fishr_tune.sweep.spec import SweepSpec
from fishr_tune.yaml_io import load_yaml

# Where the Ray cluster launcher (`ray up`) puts the cluster's YAML on the head node; Tune looks for it too.
AUTOSCALING_CONFIG = "~/ray_bootstrap_config.yaml"


def _slots_on(node: dict[str, float], spec: SweepSpec) -> int:
    resources = spec.settings.resources
    slots = int(node.get("CPU", 0.0) // resources.cpu)
    if resources.gpu > 0:
        slots = min(slots, int(node.get("GPU", 0.0) // resources.gpu))
    return slots


def autoscaling_slots(spec: SweepSpec, config_path: str = AUTOSCALING_CONFIG) -> int:
    """Trials that fit on the largest cluster the autoscaler may build (0 when this is no autoscaling head):
    a cluster that starts with no GPU worker must still see every trial it can run as demand, or it never grows."""
    path = Path(config_path).expanduser()
    try:
        config = load_yaml(path) if path.exists() else None
    except ConfigError:
        return 0
    if not isinstance(config, dict) or not isinstance(config.get("available_node_types"), dict):
        return 0
    global_max = int(config.get("max_workers", 0) or 0)
    slots = 0
    for name, node_type in config["available_node_types"].items():
        if not isinstance(node_type, dict):
            continue
        count = 1 if name == config.get("head_node_type") else min(int(node_type.get("max_workers", global_max)), global_max)
        slots += count * _slots_on(node_type.get("resources") or {}, spec)
    return slots


def trial_slots(spec: SweepSpec) -> int:
    """How many trials fit on the cluster at once (or on the largest one its autoscaler may build)."""
    import ray

    cluster = ray.cluster_resources()
    now = _slots_on({"CPU": cluster.get("CPU", 1.0), "GPU": cluster.get("GPU", 0.0)}, spec)
    return max(1, now, autoscaling_slots(spec))


PENDING_TRIALS_ENV = "TUNE_MAX_PENDING_TRIALS_PG"


@contextmanager
def trials_follow_the_cluster(spec: SweepSpec) -> Iterator[int]:
    """No cap on trials in flight (Tune starts one wherever resources free up, also on nodes that join later),
    and as many trials kept pending as fit on the cluster now or on the largest one its autoscaler may build:
    Tune keeps only one pending for a custom searcher otherwise, so a cluster that starts empty would start (and
    the autoscaler add nodes for) trials one at a time. Computed again by every run, --resume included; a
    TUNE_MAX_PENDING_TRIALS_PG set by the user wins."""
    previous = os.environ.get(PENDING_TRIALS_ENV)
    pending = int(previous) if previous else trial_slots(spec)
    os.environ[PENDING_TRIALS_ENV] = str(pending)
    try:
        yield pending
    finally:
        if previous is None:
            os.environ.pop(PENDING_TRIALS_ENV, None)


def check_ray_resources(spec: SweepSpec) -> None:
    """On a running Ray (a cluster, or one a caller started) one trial must fit on a node it has or may launch."""
    import ray

    resources = spec.settings.resources
    check_cluster_resources(resources.cpu, resources.gpu, ray.nodes(), autoscaling_slots(spec), spec.source)
