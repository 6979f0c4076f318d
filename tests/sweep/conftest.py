"""Sweep tests use the session-wide fixtures of tests/conftest.py (local_ray, tiny_sweep)."""
