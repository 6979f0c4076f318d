"""TrialSpec: the typed trial that crosses Tune's plain-dict config unchanged."""

from __future__ import annotations

from fishr_tune.sweep.trial import GROUP_KEY, Group, TrialSpec

GROUP = Group("ColoredMNIST-IRM", "Fishr", (0, 2), 1)


def test_the_config_keeps_the_keys_sweeps_have_always_written() -> None:
    config = TrialSpec.of(GROUP, 3, 12345, {"lr": 0.001}).to_config()
    assert list(config) == [GROUP_KEY, "dataset", "algorithm", "test_envs", "trial_seed", "sample_index", "seed", "hparams"]
    assert config == {GROUP_KEY: "Fishr/te0-2/ts1", "dataset": "ColoredMNIST-IRM", "algorithm": "Fishr", "test_envs": [0, 2],
                      "trial_seed": 1, "sample_index": 3, "seed": 12345, "hparams": {"lr": 0.001}}


def test_from_config_reads_back_what_to_config_wrote() -> None:
    trial = TrialSpec.of(GROUP, 0, 7, {"lambda": 100.0, "ema": 0.95})
    assert TrialSpec.from_config(trial.to_config()) == trial
    # a config JSON-decoded from params.json (lists, no sample_index in hand-written ones) reads the same
    loaded = TrialSpec.from_config({GROUP_KEY: GROUP.key, "dataset": "ColoredMNIST-IRM", "algorithm": "Fishr",
                                    "test_envs": [0, 2], "trial_seed": 1, "seed": 7, "hparams": {"lambda": 100.0, "ema": 0.95}})
    assert loaded == trial
