"""Sweep tests share one local Ray per module."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

FAULTS_ENV = "FISHR_TUNE_TEST_FAULTS"


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Path]:
    """A 2-CPU local Ray (HOME and RAY_TMPDIR are isolated for the whole session in tests/conftest.py); yields a
    directory where fault-injecting trainables leave their marks."""
    scratch = Path(tempfile.mkdtemp(prefix="rsw", dir="/tmp"))
    saved = {FAULTS_ENV: os.environ.get(FAULTS_ENV)}
    (scratch / "faults").mkdir()
    os.environ[FAULTS_ENV] = str(scratch / "faults")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield scratch / "faults"
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(scratch, ignore_errors=True)


