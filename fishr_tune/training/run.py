"""A run in its output directory: records appended as they come, atomic checkpoints, the settings saved beside them,
and resume checks (same settings, a readable checkpoint, every record up to its step) before training continues."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from fishr_tune import records
from fishr_tune.data import MultiDomainDataset
from fishr_tune.errors import ConfigError
from fishr_tune.files import write_text_atomically
from fishr_tune.training.config import TrainConfig
from fishr_tune.training.trainer import Trainer
from fishr_tune.yaml_io import load_yaml

CHECKPOINT_FILE = "checkpoint.pt"


CONFIG_FILE = "config.yaml"


DONE_FILE = "done"


MACHINE_SETTINGS = ("output_dir", "device", "data_dir", "download", "num_workers")


def saved_settings(config: TrainConfig) -> dict[str, Any]:
    """The config with hyperparameters fully resolved: `fishr-tune train --config` reruns it as is."""
    return config.model_copy(update={"hparams": config.resolved_hparams()}).model_dump()


def prepare_output_dir(config: TrainConfig, output_dir: Path, resume: bool) -> list[dict[str, Any]]:
    """Refuse to mix two runs in one directory; on resume, return the records to keep."""
    results = output_dir / records.RESULTS_FILE
    saved_config = output_dir / CONFIG_FILE
    if not results.exists() and not (output_dir / CHECKPOINT_FILE).exists():
        return []
    if not resume:
        raise ConfigError(
            f"--output-dir {output_dir} already holds a run; pass --resume to continue it, or choose another --output-dir"
        )
    if saved_config.exists():
        try:
            previous = load_yaml(saved_config) or {}
        except (ConfigError, UnicodeDecodeError, yaml.YAMLError) as error:
            reason = str(error).splitlines()[0][:200]
            raise ConfigError(f"--resume: {saved_config} is corrupt ({reason}); cannot check the run's settings") from None
        if not isinstance(previous, dict):
            raise ConfigError(f"--resume: {saved_config} is corrupt (expected a mapping of settings, got {type(previous).__name__})")
        mine = {k: v for k, v in saved_settings(config).items() if k not in MACHINE_SETTINGS}
        theirs = {k: previous.get(k) for k in mine}
        if theirs != mine:
            changed = sorted(k for k in mine if theirs[k] != mine[k])
            raise ConfigError(
                f"--resume: the run in {output_dir} was started with different settings ({', '.join(changed)})"
            )
    if not results.exists():
        return []
    records.repair_tail(results)  # a record torn by the crash is set aside (and reported), never glued onto
    return records.read(results)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's state, or a one-line refusal: a truncated or corrupt file must not end in a traceback."""
    try:
        if path.stat().st_size == 0:
            raise ValueError("the file is empty")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (torch raises many kinds for a damaged zip or pickle)
        reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise ConfigError(f"--resume: {path} is not a readable checkpoint ({reason}); remove it to train the run again "
                          "from step 0") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
        raise ConfigError(f"--resume: {path} is not a checkpoint of fishr-tune train (no step count in it)")
    return state


def check_continuity(results: Path, kept: list[dict[str, Any]], trainer: Trainer, checkpoint: Path) -> list[dict[str, Any]]:
    """The records before the checkpoint's step, which must be exactly the run's checkpoint steps, each once."""
    expected = [s for s in range(trainer.step) if trainer.is_checkpoint_step(s)]
    steps = [r.get(records.STEP) for r in kept]
    if any(not isinstance(s, int) or isinstance(s, bool) for s in steps):
        raise ConfigError(f"--resume: {results} holds a record without an integer 'step'")
    before = [r for r in kept if r[records.STEP] < trainer.step]
    have = [r[records.STEP] for r in before]
    if have == expected:
        return before
    seen: set[int] = set()
    for step in have:
        if step in seen:
            raise ConfigError(f"--resume: {results} holds the record of step {step} twice")
        seen.add(step)
    missing = [s for s in expected if s not in seen]
    if missing:
        what = f"{results} lacks" if results.exists() else f"{results} is missing, and with it"
        raise ConfigError(f"--resume: {what} the record of step {missing[0]} ({len(missing)} of {len(expected)} "
                          f"records before the checkpoint's step {trainer.step} in {checkpoint} are missing); "
                          "the run cannot continue without losing them")
    unexpected = sorted(seen - set(expected))
    if unexpected:
        raise ConfigError(f"--resume: {results} holds a record at step {unexpected[0]}, which is no checkpoint step of this run")
    raise ConfigError(f"--resume: {results} holds its records out of order")


def run_training(
    config: TrainConfig,
    resume: bool = False,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    on_dataset: Callable[[MultiDomainDataset], None] | None = None,
) -> list[dict[str, Any]]:
    """Train with records and checkpoints in the output directory; returns every record of the run."""
    output_dir = Path(config.output_dir or config.default_output_dir())
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file where a folder must go, a read-only disk: one line, not a traceback
        raise ConfigError(f"output_dir (--output-dir): cannot create {output_dir} ({error.strerror or error})") from None
    kept = prepare_output_dir(config, output_dir, resume)
    checkpoint = output_dir / CHECKPOINT_FILE
    results = output_dir / records.RESULTS_FILE
    resuming = resume and checkpoint.exists()
    if resuming:
        read_checkpoint(checkpoint)  # before the data loads: a damaged file is refused at once
    trainer = Trainer(config)
    if on_dataset is not None:
        on_dataset(trainer.dataset)
    if resuming:
        try:
            trainer.load_checkpoint(checkpoint)
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
            raise ConfigError(f"--resume: {checkpoint} does not fit this run ({type(error).__name__}: {reason})") from None
        kept = check_continuity(results, kept, trainer, checkpoint)
        records.rewrite(results, kept)
    else:
        kept = []
        if results.exists():
            results.unlink()
    write_text_atomically(output_dir / CONFIG_FILE, yaml.safe_dump(saved_settings(config), sort_keys=False))
    produced = list(kept)
    try:
        for record in trainer.records():
            records.append(results, record)
            trainer.save_checkpoint(checkpoint)
            produced.append(record)
            if on_record is not None:
                on_record(record)
    finally:
        trainer.close()
    (output_dir / DONE_FILE).write_text("done\n", encoding="utf-8")
    return produced
