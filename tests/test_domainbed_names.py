"""DomainBed's hyperparameter names: each one works as in DomainBed, or `train` refuses it naming it (exit 2)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from fishr_tune.cli import main
from fishr_tune.data.loaders import DomainBatchSampler
from fishr_tune.data.sampling import class_balanced_weights
from fishr_tune.errors import ConfigError
from fishr_tune.hparams import apply_overrides, default_hparams, seed_hash
from fishr_tune.networks import Featurizer
from fishr_tune.training import Trainer, make_config

SMALL_RESNET = {"resnet_weights": "none", "image_size": 32}


def resolved(dataset: str, overrides: dict, algorithm: str = "ERM") -> dict:
    return apply_overrides(algorithm, dataset, default_hparams(algorithm, dataset), overrides)


def train_exit(tmp_path: Path, dataset: str, hparams: dict) -> tuple[int, str]:
    """`fishr-tune train` with DomainBed names; a refusal comes before any data is read (no --data-dir needed)."""
    result = CliRunner().invoke(main, ["train", "--dataset", dataset, "--algorithm", "ERM", "--test-envs", "0",
                                       "--hparams", json.dumps(hparams), "--output-dir", str(tmp_path / "run")])
    return result.exit_code, result.output


# --- names that work -----------------------------------------------------------------------------------------------


def test_resnet18_true_is_the_resnet18_featurizer_and_false_keeps_resnet50() -> None:
    hparams = resolved("PACS", {"resnet18": True, **SMALL_RESNET})
    assert hparams["featurizer"] == "resnet18" and "resnet18" not in hparams
    assert Featurizer((3, 32, 32), hparams).n_outputs == 512
    assert resolved("PACS", {"resnet18": False})["featurizer"] == "resnet50"
    with pytest.raises(ConfigError, match="'resnet18' .* asks for resnet18, but featurizer is 'resnet50'"):
        resolved("PACS", {"resnet18": True, "featurizer": "resnet50"})


def bn_running_means(net: torch.nn.Module) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_freeze_bn_keeps_or_updates_the_batchnorm_statistics_in_train_mode(freeze_bn: bool) -> None:
    hparams = resolved("PACS", {"featurizer": "resnet18", "freeze_bn": freeze_bn, **SMALL_RESNET})
    torch.manual_seed(0)
    net = Featurizer((3, 32, 32), hparams)
    net.train()
    before = bn_running_means(net)
    net(torch.randn(4, 3, 32, 32))
    changed = [not torch.equal(a, b) for a, b in zip(before, bn_running_means(net))]
    assert all(changed) if not freeze_bn else not any(changed)
    assert default_hparams("ERM", "PACS")["freeze_bn"] is True  # the Fishr paper's protocol stays the default


def test_resnet50_augmix_loads_timms_weights_from_the_local_hugging_face_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    source = torchvision.models.resnet50(weights=None)  # stands for timm's resnet50.ram_in1k: the same names
    snapshot = tmp_path / "hub" / "models--timm--resnet50.ram_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    torch.save(source.state_dict(), snapshot / "pytorch_model.bin")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    hparams = resolved("PACS", {"resnet50_augmix": True, "resnet18": True, "image_size": 32})
    assert hparams["featurizer"] == "resnet50" and hparams["resnet_weights"] == str(snapshot / "pytorch_model.bin")
    net = Featurizer((3, 32, 32), hparams)
    assert torch.equal(net.network.conv1.weight, source.conv1.weight)
    assert torch.equal(net.network.layer4[2].conv3.weight, source.layer4[2].conv3.weight)


def test_resnet50_augmix_without_local_weights_is_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    code, output = train_exit(tmp_path, "PACS", {"resnet50_augmix": True})
    assert code == 2 and "'resnet50_augmix'" in output and "resnet50.ram_in1k" in output
    assert len(output.strip().splitlines()) == 1
    assert resolved("PACS", {"resnet50_augmix": False})["resnet_weights"] == "auto"  # torchvision's weights


def domainbed_draws(labels: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """DomainBed's sampling written out: float32 weights 1 / (count * classes), then what its InfiniteDataLoader's
    WeightedRandomSampler draws: torch.multinomial over the weights as float64, with replacement."""
    counts = Counter(int(y) for y in labels)
    weights = torch.zeros(len(labels))  # float32, as DomainBed's misc.make_weights_for_balanced_classes
    for i, y in enumerate(labels.tolist()):
        weights[i] = 1 / (counts[int(y)] * len(counts))
    return torch.multinomial(weights.double(), batch_size, replacement=True, generator=generator)


def test_class_balanced_draws_domainbeds_minibatches_and_balances_the_classes() -> None:
    config = make_config({"dataset": "ColoredMNIST-IRM", "algorithm": "ERM", "test_envs": [2], "seed": 3,
                          "hparams": {"class_balanced": True, "batch_size": 512}}, "test")
    trainer = Trainer(config)
    generator = torch.Generator().manual_seed(3)
    labels_seen = []
    for _ in range(2):
        batches = trainer.minibatches()
        for env, (x, y) in zip(trainer.train_envs, batches):
            x_in, y_in = trainer.splits[env]["in"]
            idx = domainbed_draws(y_in, 512, generator)
            assert torch.equal(y, y_in[idx]) and torch.equal(x, x_in[idx])
            labels_seen.append(y)
    # balanced: each of the 2 classes is drawn with probability 1/2; 2048 draws, 5 standard deviations
    share = torch.cat(labels_seen).double().mean().item()
    assert abs(share - 0.5) < 5 * (0.25 / 2048) ** 0.5
    plain = Trainer(make_config({"dataset": "ColoredMNIST-IRM", "test_envs": [2], "seed": 3,
                                 "hparams": {"batch_size": 512}}, "test"))
    assert not torch.equal(plain.minibatches()[0][1], trainer.minibatches()[0][1])  # the option changes the draws


def test_class_balanced_file_backed_batches_use_the_same_weights() -> None:
    labels = [torch.tensor([0] * 90 + [1] * 10), torch.tensor([0] * 5 + [1] * 5 + [2] * 30)]
    sampler = DomainBatchSampler([90 + 10, 40], 64, seed=5, augment=False,
                                 weights=[class_balanced_weights(y) for y in labels])
    keys = sampler.batch(7)
    for domain, offset in ((0, 0), (1, 100)):
        generator = torch.Generator().manual_seed(seed_hash(5, domain, 7))
        expected = domainbed_draws(labels[domain], 64, generator)
        got = torch.tensor([index - offset for index, _ in keys[64 * domain: 64 * (domain + 1)]])
        assert torch.equal(got, expected)
    assert class_balanced_weights(labels[0]).dtype == torch.float32
    assert torch.allclose(class_balanced_weights(labels[0])[[0, 95]].double(), torch.tensor([1 / 180, 1 / 20], dtype=torch.float64))


def test_fish_permute_domains_is_a_real_option() -> None:
    assert resolved("PACS", {"fish_permute_domains": True}, algorithm="Fish")["fish_permute_domains"] is True


# --- names that are refused, each with its reason ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vit", "dinov2", "vit_attn_tune", "lars"])
def test_a_feature_fishr_tune_lacks_is_refused_when_asked_for_and_false_is_accepted(tmp_path: Path, name: str) -> None:
    code, output = train_exit(tmp_path, "PACS", {name: True})
    assert code == 2 and f"hyperparameter {name!r} (DomainBed's) is not supported" in output
    assert len(output.strip().splitlines()) == 1
    assert name not in resolved("PACS", {name: False})  # false asks for what fishr-tune does: nothing to keep


@pytest.mark.parametrize("name, value", [("vit_dropout", 0.1), ("linear_steps", 500)])
def test_names_only_vit_or_erm_plus_plus_read_are_refused(tmp_path: Path, name: str, value: object) -> None:
    code, output = train_exit(tmp_path, "PACS", {name: value})
    assert code == 2 and f"{name!r} (DomainBed's) is not supported" in output


@pytest.mark.parametrize("name", ["resnet18", "resnet50_augmix", "freeze_bn", "data_augmentation"])
def test_names_that_do_nothing_on_28x28_inputs_are_refused_there(tmp_path: Path, name: str) -> None:
    code, output = train_exit(tmp_path, "ColoredMNIST", {name: True})
    assert code == 2 and f"{name!r}" in output and "does nothing on ColoredMNIST" in output


def test_a_domainbed_name_with_a_wrong_type_is_refused() -> None:
    with pytest.raises(ConfigError, match="'vit' \\(DomainBed's\\) must be true or false"):
        resolved("PACS", {"vit": "no"})


# --- analyze --best-config on DomainBed records --------------------------------------------------------------------


# Every name of DomainBed's current registry for ERM on a small dataset, as its records hold them (hparams_seed > 0
# draws vit_dropout and resnet_dropout too).
DOMAINBED_RECORD_HPARAMS = {
    "batch_size": 16, "class_balanced": False, "data_augmentation": True, "dinov2": False, "freeze_bn": False,
    "lars": False, "linear_steps": 500, "lr": 0.002, "nonlinear_classifier": False, "resnet18": False,
    "resnet50_augmix": True, "resnet_dropout": 0.1, "vit": False, "vit_attn_tune": False, "vit_dropout": 0.5,
    "weight_decay": 0.0,
}


def write_domainbed_run(root: Path, dataset: str, hparams: dict, steps: int = 2) -> None:
    args = {"algorithm": "ERM", "checkpoint_freq": None, "data_dir": "/data", "dataset": dataset, "holdout_fraction": 0.2,
            "hparams": None, "hparams_seed": 3, "output_dir": str(root / "r"), "save_model_every_checkpoint": False,
            "seed": 4, "skip_model_save": False, "steps": None, "task": "domain_generalization", "test_envs": [0],
            "trial_seed": 0, "uda_holdout_fraction": 0}
    (root / "r").mkdir(parents=True)
    accuracies = {f"env{i}_{s}_acc": 0.5 for i in range(3 if dataset == "ColoredMNIST" else 4) for s in ("in", "out")}
    lines = [json.dumps({"args": args, "epoch": 0.0, "hparams": hparams, "loss": 0.3, "mem_gb": 0.1, "step": step,
                         "step_time": 0.1, **accuracies}, sort_keys=True) for step in range(steps)]
    (root / "r" / "results.jsonl").write_text("\n".join(lines) + "\n")


def domainbed_best_config(tmp_path: Path) -> tuple[Path, str]:
    write_domainbed_run(tmp_path / "sweep", "ColoredMNIST", DOMAINBED_RECORD_HPARAMS)
    target = tmp_path / "best.yaml"
    result = CliRunner().invoke(main, ["analyze", "--records", str(tmp_path / "sweep"), "--best-config", str(target)])
    assert result.exit_code == 0, result.output
    return target, result.output


def test_best_config_from_domainbed_records_is_in_our_names(tmp_path: Path) -> None:
    target, output = domainbed_best_config(tmp_path)
    text = target.read_text()
    values = yaml.safe_load(text)
    assert set(values["hparams"]) == {"batch_size", "class_balanced", "lr", "nonlinear_classifier", "resnet_dropout",
                                      "weight_decay"}
    assert "left out" in text and "vit_dropout=0.5" in text and "resnet50_augmix=true" in text
    assert "# rerun: fishr-tune train --config" in text and "Warning" not in output
    config = make_config(values, str(target))  # every check `train --config` makes before reading data
    assert config.resolved_hparams()["lr"] == 0.002 and config.seed == 4 and config.steps == 2


@pytest.mark.slow
def test_best_config_from_domainbed_records_reruns_with_train_config(tmp_path: Path) -> None:
    target, _ = domainbed_best_config(tmp_path)
    values = yaml.safe_load(target.read_text())
    assert values["data_dir"] == "/data"  # the DomainBed machine's; here the embedded digits stand in for it
    rerun_file = tmp_path / "rerun.yaml"
    rerun_file.write_text(yaml.safe_dump({k: v for k, v in values.items() if k != "data_dir"}))
    rerun = CliRunner().invoke(main, ["train", "--config", str(rerun_file), "--output-dir", str(tmp_path / "again")])
    assert rerun.exit_code == 0, rerun.output
    saved = yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())
    assert saved["hparams"]["lr"] == 0.002 and saved["hparams"]["batch_size"] == 16 and saved["seed"] == 4


def test_best_config_from_domainbed_image_records_keeps_freeze_bn_and_the_resnet_choice(tmp_path: Path) -> None:
    hparams = {**DOMAINBED_RECORD_HPARAMS, "resnet18": True, "resnet50_augmix": False, "weight_decay": 1e-4}
    write_domainbed_run(tmp_path / "sweep", "PACS", hparams)
    target = tmp_path / "best.yaml"
    result = CliRunner().invoke(main, ["analyze", "--records", str(tmp_path / "sweep"), "--best-config", str(target)])
    assert result.exit_code == 0, result.output
    values = yaml.safe_load(target.read_text())
    assert values["hparams"]["featurizer"] == "resnet18" and values["hparams"]["freeze_bn"] is False
    assert values["hparams"]["data_augmentation"] is True and "resnet18" not in values["hparams"]
    config = make_config(values, str(target))  # what `train --config` checks before reading any data
    assert config.resolved_hparams()["featurizer"] == "resnet18"
