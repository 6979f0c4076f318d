"""Training one run: config (validated settings), splits (the data behind one interface, in memory or file-backed),
trainer (the DomainBed loop), rng (checkpointed random state) and run (output directory, checkpoints, resume).
The names below are the package's interface."""

from fishr_tune.training.config import TrainConfig, format_validation_error, load_config_file, make_config
from fishr_tune.training.rng import rng_state, seed_everything, set_rng_state
from fishr_tune.training.run import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DONE_FILE,
    check_continuity,
    prepare_output_dir,
    read_checkpoint,
    run_training,
    saved_settings,
)
from fishr_tune.training.splits import EVAL_CHUNK_SIZE, accuracy, predicted_labels
from fishr_tune.training.trainer import NonFiniteLossError, Trainer, check_amp, resolve_device

__all__ = [
    "CHECKPOINT_FILE", "CONFIG_FILE", "DONE_FILE", "EVAL_CHUNK_SIZE", "NonFiniteLossError", "TrainConfig", "Trainer",
    "accuracy", "check_amp", "check_continuity", "format_validation_error", "load_config_file", "make_config",
    "predicted_labels", "prepare_output_dir", "read_checkpoint", "resolve_device", "rng_state", "run_training",
    "saved_settings", "seed_everything", "set_rng_state",
]
