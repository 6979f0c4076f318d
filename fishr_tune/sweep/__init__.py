"""Hyperparameter sweeps on Ray Tune: spec (YAML -> validated spec), search (per-group TPE and ASHA),
trainable (the Trainer inside a Tune trial), runner (Tuner, storage, failures, resume, summary)."""
