"""Per-trial system metrics (CPU, memory, GPU) sampled with MLflow's own monitors inside the trial.

The trial never talks to MLflow: each record carries the averages since the previous record as
`system/<name>` metrics, which the driver's callback journals with the record (MLflow's UI shows the
`system/` prefix as its system-metrics section).
"""

from __future__ import annotations

import threading
from typing import Any

PREFIX = "system/"


class SystemMetrics:
    """Samples every `interval_s` seconds in a daemon thread; `take()` returns and resets the averages."""

    def __init__(self, interval_s: float = 1.0):
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor

        self.monitors: list[Any] = [CPUMonitor()]
        try:
            from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

            self.monitors.append(GPUMonitor())
        except (ImportError, RuntimeError):
            pass  # no NVIDIA GPU here (or no NVML): CPU and memory only
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="system-metrics", daemon=True)
        self._thread.start()

    def sample(self) -> None:
        with self._lock:
            for monitor in self.monitors:
                monitor.collect_metrics()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def take(self) -> dict[str, float]:
        """Averages since the last call, as `system/<MLflow's metric name>`."""
        self.sample()
        with self._lock:
            out: dict[str, float] = {}
            for monitor in self.monitors:
                out.update({f"{PREFIX}{k}": float(v) for k, v in monitor.aggregate_metrics().items()})
                monitor.clear_metrics()
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
