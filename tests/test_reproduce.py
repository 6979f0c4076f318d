"""The Table 2 reproduction: the loop's penalties against hand computations, the table, the CLI, Ray execution."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from fishr_tune import reproduce as rep
from fishr_tune.cli import main
from fishr_tune.reproduce import run as reproduce_run


def _invoke(*args: str):
    return CliRunner().invoke(main, ["reproduce", "colored-mnist-irm", *args], catch_exceptions=False)


@pytest.fixture
def small_problem() -> tuple[rep.IrmMLP, list[torch.Tensor], list[torch.Tensor]]:
    """A small single-logit MLP and two environments of different sizes, both labels present in each.

    float64, so that the comparisons with hand computations hold on any CPU (float32 rounding, amplified by a
    penalty weight of 91257, differs between machines)."""
    torch.manual_seed(3)
    model = rep.IrmMLP(n_inputs=6, hidden_dim=5).double()
    envs_x = [torch.randn(7, 6, dtype=torch.float64), torch.randn(9, 6, dtype=torch.float64)]
    envs_y = [torch.tensor([0, 1, 1, 0, 1, 0, 0]), torch.tensor([1, 1, 0, 1, 0, 0, 1, 0, 1])]
    return model, envs_x, envs_y


def _hand_bce(logit: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logit)
    y = label.to(logit.dtype)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p))


def _hand_fishr(model: rep.IrmMLP, envs_x: list[torch.Tensor], envs_y: list[torch.Tensor], centered: bool = True,
                offdiagonal: bool = False) -> torch.Tensor:
    """Per-sample head gradients materialized one sample at a time by autograd, then the script's reduction,
    tensor by tensor (weight, bias) as its compute_grads_variance: centred unless fishr_notcentered; for
    fishr_offdiagonal einsum("na,nb->ab") / (n * p), else the mean of squares."""
    head = model.classifier
    statistics = []
    for x, y in zip(envs_x, envs_y):
        per_tensor: list[list[torch.Tensor]] = [[], []]
        for i in range(len(y)):
            feature = model.body(x[i : i + 1])
            loss = _hand_bce(head(feature).reshape(()), y[i])
            for rows, grad in zip(per_tensor, torch.autograd.grad(loss, [head.weight, head.bias], create_graph=True)):
                rows.append(grad.reshape(-1))
        blocks = []
        for rows in per_tensor:
            grads = torch.stack(rows)
            if centered:
                grads = grads - grads.mean(dim=0, keepdim=True)
            if offdiagonal:
                blocks.append((torch.einsum("na,nb->ab", grads, grads) / (grads.shape[0] * grads.shape[1])).reshape(-1))
            else:
                blocks.append(grads.pow(2).mean(dim=0))
        statistics.append(torch.cat(blocks))
    average = (statistics[0] + statistics[1]) / 2
    return sum(((v - average) ** 2).sum() for v in statistics)


def _hand_irm(model: rep.IrmMLP, envs_x: list[torch.Tensor], envs_y: list[torch.Tensor]) -> torch.Tensor:
    """d/ds mean BCE(s * logit) at s = 1 is mean((sigmoid(logit) - y) * logit); squared, averaged over envs."""
    penalties = []
    for x, y in zip(envs_x, envs_y):
        logits = model(x)[1].reshape(-1)
        penalties.append(((torch.sigmoid(logits) - y.float()) * logits).mean() ** 2)
    return (penalties[0] + penalties[1]) / 2


def _hand_vrex(model: rep.IrmMLP, envs_x: list[torch.Tensor], envs_y: list[torch.Tensor]) -> torch.Tensor:
    nlls = [_hand_bce(model(x)[1].reshape(-1), y).mean() for x, y in zip(envs_x, envs_y)]
    return (nlls[0] - nlls[1]) ** 2


HAND_PENALTIES = {
    "IRM": _hand_irm, "VREx": _hand_vrex, "Fishr": _hand_fishr,
    "Fishr-notcentered": lambda *problem: _hand_fishr(*problem, centered=False),
    "Fishr-offdiagonal": lambda *problem: _hand_fishr(*problem, offdiagonal=True),
}


def test_fishr_penalty_and_its_gradient_match_materialized_per_sample_gradients(small_problem) -> None:
    model, envs_x, envs_y = small_problem
    features, logits = model(torch.cat(envs_x))
    ours = rep.fishr_penalty_summed(model.classifier, features, torch.cat(envs_y), [7, 9], logits=logits)
    hand = _hand_fishr(model, envs_x, envs_y)
    assert hand.item() > 0
    torch.testing.assert_close(ours, hand, rtol=1e-10, atol=1e-15)
    # The penalty trains the featurizer: its gradient wrt the body must match the hand computation's too.
    body = list(model.body.parameters())
    for g_ours, g_hand in zip(torch.autograd.grad(ours, body), torch.autograd.grad(hand, body)):
        torch.testing.assert_close(g_ours, g_hand, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("algorithm", ["IRM", "VREx", "Fishr", "Fishr-notcentered", "Fishr-offdiagonal"])
@pytest.mark.parametrize("step", [0, 189, 190, 400])
def test_loop_objective_matches_hand_computation(small_problem, algorithm: str, step: int) -> None:
    """loss = mean env NLL + l2 * ||w||^2 + weight * penalty, divided by the weight once it is annealed in."""
    model, envs_x, envs_y = small_problem
    config = rep.ScriptConfig()
    out = rep.training_loss(algorithm, model, envs_x, envs_y, step, config)
    penalty = HAND_PENALTIES[algorithm](model, envs_x, envs_y)
    assert out.penalty == pytest.approx(penalty.item(), rel=1e-10, abs=1e-16)
    nll = torch.stack([_hand_bce(model(x)[1].reshape(-1), y).mean() for x, y in zip(envs_x, envs_y)]).mean()
    l2 = sum(p.pow(2).sum() for p in model.parameters())
    weight = 91257.18613115903 if step >= 190 else 1.0
    expected = nll + 0.00110794568 * l2 + weight * penalty
    if weight > 1:
        expected = expected / weight
    torch.testing.assert_close(out.loss, expected, rtol=1e-10, atol=1e-14)
    assert out.train_nll == pytest.approx(nll.item(), rel=1e-12)


def test_fishr_variants_differ_from_fishr_and_from_each_other(small_problem) -> None:
    """The Table 6 variants are not Fishr under another name: three distinct penalties on the same batch."""
    model, envs_x, envs_y = small_problem
    penalties = {a: rep.training_loss(a, model, envs_x, envs_y, 0, rep.ScriptConfig()).penalty
                 for a in ("Fishr", "Fishr-notcentered", "Fishr-offdiagonal")}
    assert all(p > 0 for p in penalties.values())
    assert len({round(p, 12) for p in penalties.values()}) == 3


def test_tiny_run_of_the_variants_shows_no_paper_numbers() -> None:
    result = _invoke("--algorithms", "fishr-offdiagonal,FISHR-notcentered", "--restarts", "1", "--steps", "2", "--no-ray")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Algorithm"))
    rows = lines[start + 2 : start + 4]
    assert [row.split()[0] for row in rows] == ["Fishr-offdiagonal", "Fishr-notcentered"]
    assert all(row.count("n/a") == 4 for row in rows)
    assert "Table 6 variants" in result.output


def test_erm_objective_has_no_penalty(small_problem) -> None:
    model, envs_x, envs_y = small_problem
    out = rep.training_loss("ERM", model, envs_x, envs_y, 300, rep.ScriptConfig())
    nll = torch.stack([F.binary_cross_entropy_with_logits(model(x)[1].reshape(-1), y.float()) for x, y in zip(envs_x, envs_y)]).mean()
    l2 = sum(p.pow(2).sum() for p in model.parameters())
    torch.testing.assert_close(out.loss, nll + 0.00110794568 * l2)
    assert out.penalty == 0.0


def test_model_is_the_scripts_mlp() -> None:
    model = rep.IrmMLP()
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(390, 392), (390,), (390, 390), (390,), (1, 390), (1,)]
    assert all(not p.detach().any() for name, p in model.named_parameters() if name.endswith("bias"))


def test_tiny_run_prints_table_with_papers_numbers_and_saves_json(tmp_path: Path, monkeypatch) -> None:
    builds: list[int] = []
    real_build = rep.build_restart_dataset

    def counting_build(seed, data_dir, label_noise):
        builds.append(seed)
        return real_build(seed, data_dir, label_noise)

    monkeypatch.setattr(reproduce_run, "build_restart_dataset", counting_build)  # where run_reproduction looks it up
    output = tmp_path / "out" / "table2.json"
    result = _invoke("--algorithms", "ERM,fishr", "--restarts", "1", "--steps", "10", "--no-ray",
                     "--output", str(output))
    assert result.exit_code == 0, result.output
    assert "embedded default" in result.output and "env2 '-90%'" in result.output
    assert "[2/2] Fishr restart 0" in result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Algorithm"))
    header, erm_row, fishr_row = lines[start], lines[start + 2], lines[start + 3]
    for column in ("Train acc", "Train (paper)", "Test acc", "Test (paper)", "Δ test", "Gray test acc", "Gray (paper)"):
        assert column in header
    assert erm_row.startswith("ERM ") and fishr_row.startswith("Fishr ")
    assert "86.4 ± 0.2" in erm_row and "14.0 ± 0.7" in erm_row and "71.0 ± 0.7" in erm_row
    assert "71.0 ± 0.9" in fishr_row and "69.5 ± 1.0" in fishr_row and "70.2 ± 1.1" in fishr_row
    assert "10 steps" in result.output  # the comparison is flagged as not at the paper's settings
    assert builds == [0]  # one dataset for the restart, shared by both algorithms

    saved = json.loads(output.read_text())
    assert saved["complete"] and saved["algorithms"] == ["ERM", "Fishr"]
    assert [(r["algorithm"], r["restart"]) for r in saved["results"]] == [("ERM", 0), ("Fishr", 0)]
    for r in saved["results"]:
        for metric in rep.METRICS:
            assert 0.0 <= r[metric] <= 1.0
        assert r["history"][-1]["step"] == 9
    # Same data and initialization for both algorithms; the penalty weight is 1 before step 190, so after 10
    # steps the runs are close but not identical (the Fishr penalty did move the weights).
    erm, fishr = saved["results"]
    assert erm["history"][0]["train_nll"] == pytest.approx(fishr["history"][0]["train_nll"])
    assert erm["history"][-1]["train_nll"] != fishr["history"][-1]["train_nll"]
    summary = saved["summary_percent"]["ERM"]["test_acc"]
    assert summary["mean"] == pytest.approx(100 * erm["test_acc"]) and summary["std"] == 0.0
    assert saved["paper_percent"]["Fishr"]["test_acc"] == {"mean": 69.5, "std": 1.0}


def test_label_noise_other_than_table2_hides_papers_numbers_and_partial_saves_are_valid_json() -> None:
    config = rep.ScriptConfig(steps=2, label_noise=0.0)
    snapshots: list[str] = []
    reproduction = rep.run_reproduction(
        ["VREx", "ERM"], 2, config, seed=1, use_ray=False,
        on_result=lambda result, done, total, so_far: snapshots.append(json.dumps(so_far.to_json(), allow_nan=False)),
    )
    text = rep.format_markdown(reproduction)
    row = next(line for line in text.splitlines() if line.startswith("| VREx"))
    assert "n/a" in row and "67.2" not in row
    assert "Label noise 0" in text
    assert [(r.algorithm, r.seed) for r in reproduction.results] == [("VREx", 1000), ("VREx", 1001), ("ERM", 1000), ("ERM", 1001)]
    first = json.loads(snapshots[0])
    assert not first["complete"] and list(first["summary_percent"]) == ["VREx"]
    assert json.loads(snapshots[-1])["summary_percent"]["ERM"]["test_acc"]["n"] == 2
    assert reproduction.complete


@pytest.mark.parametrize(
    "args, message",
    [
        (["--algorithms", "ERM,Foo"],
         "unknown algorithm 'Foo'; valid algorithms: ERM, ERM-grayscale, Fishr, Fishr-notcentered, Fishr-offdiagonal, "
         "IRM, VREx"),
        (["--restarts", "0"], "--restarts"),
        (["--label-noise", "1.5"], "--label-noise"),
        (["--steps", "0"], "--steps"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str) -> None:
    result = _invoke(*args, "--no-ray")
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_through_local_ray_matches_in_process(tmp_path: Path, monkeypatch) -> None:
    """A local Ray (HOME and RAY_TMPDIR isolated for the session by tests/conftest.py): same seeds give the same
    numbers as in-process."""
    import ray

    monkeypatch.delenv("RAY_worker_niceness", raising=False)  # restored (unset) after the test
    config = rep.ScriptConfig(steps=3)
    seen: list[int] = []
    try:
        on_ray = rep.run_reproduction(["ERM", "VREx"], 2, config, use_ray=True, cpus_per_restart=1,
                                      on_result=lambda result, done, total, so_far: seen.append(done))
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert not ray.is_initialized()  # the run shuts down the Ray it started
    assert os.environ["RAY_worker_niceness"] == "0"  # local workers are not reniced to +15
    assert seen == [1, 2, 3, 4]
    in_process = rep.run_reproduction(["ERM", "VREx"], 2, config, use_ray=False, cpus_per_restart=1)
    assert on_ray.executor.startswith("ray (local")
    for a, b in zip(on_ray.results, in_process.results):
        assert (a.algorithm, a.restart) == (b.algorithm, b.restart)
        assert a.history[-1]["train_nll"] == pytest.approx(b.history[-1]["train_nll"], rel=1e-5)
        assert a.test_acc == b.test_acc


# ---------------------------------------------------------------- IRM Table 1: the grayscale ERM oracle


def test_grayscale_oracle_sees_the_digit_without_its_colour() -> None:
    """The oracle's view of a coloured image is the (subsampled) digit itself, whatever the colour: swapping the
    colour channels changes nothing, and the test environment and its gray copy (same digits) look identical."""
    from fishr_tune.data.sources import load_mnist

    dataset = rep.build_restart_dataset(0, None, 0.25)
    envs = dataset.environments
    assert [env.name for env in envs] == ["+80%", "+90%", "-90%", "gray"]
    test, gray = envs[rep.TEST_ENV], envs[rep.GRAY_TEST_ENV]
    for env in (envs[0], test):
        assert (env.x.amin(dim=1) == 0).all()  # coloured: one channel is empty everywhere
        assert (env.x.amax(dim=(2, 3)) > 0).sum(dim=1).eq(1).all()
        view = rep.remove_color(env.x)
        assert view.shape == (len(env), 14, 14)
        assert torch.equal(view, rep.remove_color(env.x.flip(1)))  # the other colour: the same input
        assert torch.equal(view, env.x.sum(dim=1))  # the IRM script's channel sum, on coloured digits
    assert torch.equal(gray.x[:, 0], gray.x[:, 1])
    assert torch.equal(rep.remove_color(test.x), rep.remove_color(gray.x))
    digits = load_mnist(None, False)
    cut = len(digits.train_labels) * 5 // 6
    expected = digits.train_images[cut:][:, ::2, ::2].float() / 255.0
    torch.testing.assert_close(rep.remove_color(test.x), expected, rtol=0, atol=0)


def test_grayscale_model_ignores_colour_and_trains_without_penalty(small_problem) -> None:
    torch.manual_seed(0)
    model = rep.IrmMLP(n_inputs=2 * 3 * 3, hidden_dim=5, grayscale=True)
    assert [tuple(p.shape) for p in model.body.parameters()][0] == (5, 9)
    colours = torch.randint(2, (6,))
    digits = torch.rand(6, 3, 3)
    x = torch.zeros(6, 2, 3, 3)
    x[torch.arange(6), colours] = digits
    torch.testing.assert_close(model(x)[1], model(x.flip(1))[1], rtol=0, atol=0)
    assert not torch.equal(model(x)[1], model(2 * x)[1])  # it does read the digit
    envs_x, envs_y = [x[:3], x[3:]], [torch.tensor([0, 1, 1]), torch.tensor([1, 0, 0])]
    out = rep.training_loss(rep.GRAYSCALE_ORACLE, model, envs_x, envs_y, 300, rep.ScriptConfig())
    nll = torch.stack([_hand_bce(model(x)[1].reshape(-1), y).mean() for x, y in zip(envs_x, envs_y)]).mean()
    l2 = sum(p.pow(2).sum() for p in model.parameters())
    torch.testing.assert_close(out.loss, nll + 0.00110794568 * l2)
    assert out.penalty == 0.0


def test_oracle_row_shows_irm_table1_and_the_optimal_invariant_line(tmp_path: Path) -> None:
    output = tmp_path / "oracle.json"
    result = _invoke("--algorithms", "ERM-grayscale", "--restarts", "1", "--steps", "3", "--no-ray", "--output", str(output))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Algorithm"))
    oracle, optimum = lines[start + 2], lines[start + 3]
    assert oracle.startswith("ERM-grayscale ") and "73.5 ± 0.2" in oracle and "73.0 ± 0.4" in oracle
    assert oracle.rstrip().endswith("n/a")  # IRM's Table 1 has no gray test
    assert optimum.startswith("Optimal invariant (hypothetical)") and optimum.split()[-6:-4] == ["75.0", "-"]
    saved = json.loads(output.read_text())
    assert saved["paper_percent"] == {"ERM-grayscale": {"train_acc": {"mean": 73.5, "std": 0.2},
                                                        "test_acc": {"mean": 73.0, "std": 0.4}}}
    assert saved["reference_percent"]["optimal_invariant"] == {"train_acc": 75.0, "test_acc": 75.0}


def test_default_algorithms_include_the_oracle() -> None:
    from fishr_tune.cli.reproduce import reproduce_colored_mnist_irm

    default = next(p.default for p in reproduce_colored_mnist_irm.params if p.name == "algorithms")
    assert rep.parse_algorithms(default) == ["ERM", "IRM", "VREx", "Fishr", "ERM-grayscale"]

def test_restart_inconsistency_scores_the_trained_model(small_problem) -> None:
    model, envs_x, envs_y = small_problem
    report = rep.restart_inconsistency(model, envs_x, envs_y, epsilon=0.1)
    with torch.no_grad():
        risks = [float(_hand_bce(model(x)[1].reshape(-1).double(), y).mean()) for x, y in zip(envs_x, envs_y)]
    assert [d["risk"] for d in report["domains"]] == pytest.approx(risks, rel=1e-6)
    assert report["inconsistency"] == max(p["total"] for p in report["pairs"])
    result = rep.RestartResult("ERM", 0, 0, 0.5, 0.5, 0.5, 0.7, 0.0, 1.0, inconsistency=report)
    reproduction = rep.Reproduction(["ERM"], 1, 0, rep.ScriptConfig(inconsistency_epsilon=0.1), "", {}, [result], 1.0, "test")
    assert reproduction.inconsistency_summary()["ERM"]["inconsistency"]["mean"] == pytest.approx(report["inconsistency"])
    assert "I^eps" in rep.format_table(reproduction) and "I^eps" in rep.format_markdown(reproduction)
