"""System metrics sampled with MLflow's monitors inside a trial, reported as `system/<name>` with each record."""

from __future__ import annotations

import time

import psutil

from fishr_tune.sweep.system_metrics import PREFIX, SystemMetrics


def test_take_returns_averages_since_the_last_call_under_mlflow_names() -> None:
    monitor = SystemMetrics(interval_s=0.05)
    try:
        time.sleep(0.2)
        first = monitor.take()
        total_mb = psutil.virtual_memory().total / 1e6
        assert 0.0 <= first[f"{PREFIX}cpu_utilization_percentage"] <= 100.0
        assert 0.0 < first[f"{PREFIX}system_memory_usage_megabytes"] <= total_mb
        assert 0.0 < first[f"{PREFIX}system_memory_usage_percentage"] <= 100.0
        # take() resets: the next averages cover only the samples since, so they are computed afresh
        assert all(not monitor_metrics for monitor_metrics in (m.metrics for m in monitor.monitors))
        assert set(monitor.take()) == set(first)
    finally:
        monitor.close()
    assert not monitor._thread.is_alive()
