from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from fishr_tune import records
from fishr_tune.errors import ConfigError
from fishr_tune.training import TrainConfig, Trainer, make_config, rng_state, run_training, set_rng_state


def irm_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(dataset="ColoredMNIST-IRM", algorithm="ERM", test_envs=[2], steps=60, checkpoint_freq=20,
                  output_dir=str(tmp_path / "run"), device="cpu")
    values.update(overrides)
    return make_config(values, "test")


def test_erm_learns_the_spurious_colour(tmp_path) -> None:
    """ERM on the IRM setup fits the colour: high validation accuracy, below-chance test accuracy (what Fishr fixes)."""
    produced = run_training(irm_config(tmp_path, steps=1000, checkpoint_freq=100))
    assert any(r["env0_out_acc"] > 0.7 and r["env1_out_acc"] > 0.7 and r["env2_in_acc"] < 0.3 for r in produced)
    assert max(r["val_acc"] for r in produced) > 0.8


def test_records_follow_the_domainbed_schedule(tmp_path) -> None:
    produced = run_training(irm_config(tmp_path))
    assert [r["step"] for r in produced] == [0, 20, 40, 59]
    assert records.read(tmp_path / "run" / "results.jsonl") == produced
    last = produced[-1]
    assert last["args"]["test_envs"] == [2] and last["args"]["steps"] == 60
    assert last["hparams"]["featurizer"] == "mlp"
    assert set(last) >= {f"env{i}_{s}_acc" for i in range(3) for s in ("in", "out")}
    assert last["epoch"] == pytest.approx(60 * 64 / 1667, rel=0.01)


def test_resume_continues_exactly(tmp_path) -> None:
    reference = run_training(irm_config(tmp_path, output_dir=str(tmp_path / "ref")))
    config = irm_config(tmp_path, output_dir=str(tmp_path / "cut"))
    trainer = Trainer(config)
    stream = trainer.records()
    next(stream), next(stream)  # records at steps 0 and 20
    trainer.save_checkpoint(tmp_path / "ckpt.pt")
    expected_next = next(stream)
    resumed = Trainer(config)
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    got_next = next(resumed.records())
    for key in ("loss", "env0_in_acc", "env2_out_acc", "step"):
        assert got_next[key] == expected_next[key]
    assert got_next["loss"] == reference[2]["loss"]


def test_rng_state_keeps_numpys_cached_gaussian_through_a_weights_only_checkpoint() -> None:
    """Beta(2, 2) (Mixup with alpha > 1) draws normals: after an odd number of them numpy holds one cached."""
    np.random.seed(0)
    np.random.standard_normal()
    assert np.random.get_state(legacy=True)[3] == 1
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    expected = [np.random.beta(2.0, 2.0) for _ in range(4)]
    np.random.seed(1)  # clobber, so the draws below can only match through the restored state
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True))
    assert [np.random.beta(2.0, 2.0) for _ in range(4)] == expected


def test_run_training_resume_neither_loses_nor_duplicates(tmp_path) -> None:
    config = irm_config(tmp_path)
    full = run_training(config)
    # simulate a crash after the record at step 20 was written but before its checkpoint replaced step 0's
    out = tmp_path / "run"
    trainer = Trainer(config)
    stream = trainer.records()
    next(stream)
    trainer.save_checkpoint(out / "checkpoint.pt")
    records.rewrite(out / "results.jsonl", full[:2])
    (out / "done").unlink()
    resumed = run_training(config, resume=True)
    assert [r["step"] for r in resumed] == [0, 20, 40, 59]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    assert records.read(out / "results.jsonl") == resumed


def test_existing_run_is_never_overwritten(tmp_path) -> None:
    run_training(irm_config(tmp_path))
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        run_training(irm_config(tmp_path))
    with pytest.raises(ConfigError, match=r"different settings \(steps\)"):
        run_training(irm_config(tmp_path, steps=80), resume=True)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="unknown key 'stepz'"):
        make_config({"stepz": 3}, "x.yaml")
    with pytest.raises(ConfigError, match="x.yaml: key 'holdout_fraction'"):
        make_config({"holdout_fraction": 1.5}, "x.yaml")
    with pytest.raises(ConfigError, match="environment 3 out of range for ColoredMNIST-IRM"):
        make_config({"test_envs": [3]}, "x.yaml")
    with pytest.raises(ConfigError, match="none is left to train on"):
        make_config({"test_envs": [0, 1, 2]}, "x.yaml")
    with pytest.raises(ConfigError, match="unknown dataset 'MNIST'"):
        make_config({"dataset": "MNIST"}, "x.yaml")


def test_seed_controls_initialisation_and_sampling(tmp_path) -> None:
    a = Trainer(irm_config(tmp_path, seed=1))
    b = Trainer(irm_config(tmp_path, seed=1))
    c = Trainer(irm_config(tmp_path, seed=2))
    assert all(torch.equal(x, y) for x, y in zip(a.algorithm.parameters(), b.algorithm.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.algorithm.parameters(), c.algorithm.parameters()))
    assert torch.equal(a.minibatches()[0][1], b.minibatches()[0][1])


@pytest.mark.slow
def test_erm_with_mnist_cnn_learns_the_colour_on_domainbed_colored_mnist(tmp_path) -> None:
    config = make_config(
        dict(dataset="ColoredMNIST", algorithm="ERM", test_envs=[2], steps=301, checkpoint_freq=100,
             output_dir=str(tmp_path / "cnn"), device="cpu"),
        "test",
    )
    produced = run_training(config)
    assert any(r["env0_out_acc"] > 0.7 and r["env1_out_acc"] > 0.7 and r["env2_in_acc"] < 0.3 for r in produced)


def test_bf16_on_the_cpu_trains_fishr_with_float32_penalty_state(tmp_path, monkeypatch) -> None:
    """amp: bf16 on a CPU with bfloat16 (declared so here, the test runs on any CPU: autocast also emulates it):
    Fishr trains, its moving averages of gradient variances stay float32, and accuracy tracks fp32's."""
    from fishr_tune import networks

    monkeypatch.setattr(networks, "cpu_has_native_bf16", lambda: True)
    hparams = {"penalty_anneal_iters": 20, "lambda": 100.0}
    fp32 = run_training(irm_config(tmp_path, algorithm="Fishr", hparams=hparams, output_dir=str(tmp_path / "fp32")))
    config = irm_config(tmp_path, algorithm="Fishr", hparams={**hparams, "amp": "bf16"}, output_dir=str(tmp_path / "bf16"))
    trainer = Trainer(config)
    bf16 = list(trainer.records())
    assert [r["step"] for r in bf16] == [r["step"] for r in fp32]
    assert all(np.isfinite(r["loss"]) for r in bf16) and bf16[-1]["loss"] != fp32[-1]["loss"]
    assert abs(bf16[-1]["val_acc"] - fp32[-1]["val_acc"]) < 0.05
    assert trainer.algorithm.moving_average.state.dtype == torch.float32


def test_bf16_is_refused_before_training_on_a_cpu_without_it(tmp_path, monkeypatch) -> None:
    from fishr_tune import networks

    monkeypatch.setattr(networks, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ConfigError, match="hyperparameter amp: 'bf16' cannot run here: .*set amp to 'off'"):
        Trainer(irm_config(tmp_path, hparams={"amp": "bf16"}))


# ---- resuming from damaged files: exactly the uninterrupted run, or a one-line refusal -------------------------


class Interrupt(Exception):
    pass


def interrupted_run(tmp_path, at_step: int = 20) -> tuple[TrainConfig, Path]:
    """A run killed right after its record (and checkpoint) at `at_step`: results [0, ..., at_step], checkpoint past it."""
    config = irm_config(tmp_path)

    def stop(record: dict) -> None:
        if record["step"] == at_step:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_training(config, on_record=stop)
    return config, tmp_path / "run"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[dict]:
    return run_training(irm_config(tmp_path_factory.mktemp("reference")))


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "step_time"} for row in rows]


def tear_a_record_after_the_checkpoint(run) -> None:
    with open(run / "results.jsonl", "a") as handle:
        handle.write('{"env0_in_acc": 0.5, "step": 4')


def a_record_past_the_checkpoint(run) -> None:  # died after writing the record, before its checkpoint replaced the last
    rows = records.read(run / "results.jsonl")
    records.append(run / "results.jsonl", {**rows[-1], "step": 40})


def lose_the_checkpoint(run) -> None:
    (run / "checkpoint.pt").unlink()


@pytest.mark.parametrize("damage", [tear_a_record_after_the_checkpoint, a_record_past_the_checkpoint, lose_the_checkpoint])
def test_resume_after_recoverable_damage_equals_the_uninterrupted_run(tmp_path, uninterrupted, damage) -> None:
    config, run = interrupted_run(tmp_path)
    damage(run)
    resumed = run_training(config, resume=True)
    assert without_timing(resumed) == without_timing(uninterrupted)
    assert without_timing(records.read(run / "results.jsonl")) == without_timing(uninterrupted)


def drop_the_last_record(run) -> None:
    path = run / "results.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))


def delete_the_records(run) -> None:
    (run / "results.jsonl").unlink()


def garble_the_first_record(run) -> None:
    path = run / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0][:30] + "\n" + "".join(lines[1:]))


def duplicate_a_record(run) -> None:
    path = run / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "".join(lines))


def empty_checkpoint(run) -> None:
    (run / "checkpoint.pt").write_bytes(b"")


def truncated_checkpoint(run) -> None:
    path = run / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage_checkpoint(run) -> None:
    (run / "checkpoint.pt").write_bytes(bytes(range(256)) * 40)


def foreign_checkpoint(run) -> None:
    torch.save({"weights": torch.zeros(3)}, run / "checkpoint.pt")


def invalid_yaml_config(run) -> None:
    (run / "config.yaml").write_text("dataset: ColoredMNIST-IRM\nsteps: [60\n")


def binary_config(run) -> None:
    (run / "config.yaml").write_bytes(b"\xff\xfe\x00garbage")


def list_config(run) -> None:
    (run / "config.yaml").write_text("- 1\n- 2\n")


REFUSALS = [
    (drop_the_last_record, r"results.jsonl lacks the record of step 20 \(1 of 2 records before the checkpoint's step 21"),
    (delete_the_records, r"results.jsonl is missing, and with it the record of step 0"),
    (garble_the_first_record, r"results.jsonl lacks the record of step 0"),
    (duplicate_a_record, r"results.jsonl holds the record of step 0 twice"),
    (empty_checkpoint, r"checkpoint.pt is not a readable checkpoint \(the file is empty\)"),
    (truncated_checkpoint, r"checkpoint.pt is not a readable checkpoint \("),
    (garbage_checkpoint, r"checkpoint.pt is not a readable checkpoint \("),
    (foreign_checkpoint, r"checkpoint.pt is not a checkpoint of fishr-tune train"),
    (invalid_yaml_config, r"config.yaml is corrupt \("),
    (binary_config, r"config.yaml is corrupt \("),
    (list_config, r"config.yaml is corrupt \(expected a mapping of settings, got list\)"),
]


@pytest.mark.parametrize("damage,message", REFUSALS, ids=[d.__name__ for d, _ in REFUSALS])
def test_resume_after_unrecoverable_damage_refuses_and_keeps_the_files(tmp_path, damage, message) -> None:
    config, run = interrupted_run(tmp_path)
    damage(run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(ConfigError, match="^--resume: .*" + message) as refusal:
        run_training(config, resume=True)
    assert "\n" not in str(refusal.value) and len(str(refusal.value)) < 400
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing recorded is touched


def test_cli_resume_from_an_empty_checkpoint_is_one_line_and_exit_2(tmp_path) -> None:
    from click.testing import CliRunner

    from fishr_tune.cli import main

    config, run = interrupted_run(tmp_path)
    empty_checkpoint(run)
    result = CliRunner().invoke(main, ["train", "--steps", "60", "--checkpoint-freq", "20", "--device", "cpu",
                                       "--output-dir", str(run), "--resume"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"Error: --resume: {run / 'checkpoint.pt'} is not a readable checkpoint "
                                                  "(the file is empty); remove it to train the run again from step 0"]


def test_checkpoints_are_written_through_a_fsynced_temporary_file(tmp_path, monkeypatch) -> None:
    """The file is synced before the rename, and the directory after it; nothing but the checkpoint is left."""
    import os

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b))[1])
    trainer = Trainer(irm_config(tmp_path))
    trainer.save_checkpoint(tmp_path / "checkpoint.pt")
    assert events == ["fsync-file", "rename", "fsync-dir"]
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["checkpoint.pt"]
    restored = Trainer(irm_config(tmp_path))
    restored.load_checkpoint(tmp_path / "checkpoint.pt")
    assert restored.step == trainer.step == 0
