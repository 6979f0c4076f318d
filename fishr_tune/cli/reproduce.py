"""`fishr-tune reproduce ...`: the published tables, rerun with the original scripts' protocols."""

from __future__ import annotations

import functools
import json
from typing import Any

import click

from fishr_tune.cli.common import exits_2_on_bad_input


@click.group()
def reproduce() -> None:
    """Reproduce published results with the original scripts' protocols."""


@reproduce.command("colored-mnist-irm")
@click.option("--algorithms", default="ERM,IRM,VREx,Fishr,ERM-grayscale", show_default=True,
              help="Comma-separated: ERM, IRM, VREx, Fishr, the Table 6 variants Fishr-notcentered, "
                   "Fishr-offdiagonal, and ERM-grayscale (IRM's Table 1 oracle: colour removed).")
@click.option("--restarts", type=int, default=10, show_default=True, help="Restarts per algorithm (the paper: 10).")
@click.option("--data-dir",
              help="Directory with MNIST/raw (torchvision layout). Default: $FISHR_TUNE_DATA, else the embedded 5,000 "
                   "digits.")
@click.option("--steps", type=int, default=501, show_default=True, help="Full-batch optimizer steps.")
@click.option("--label-noise", type=float, default=0.25, show_default=True,
              help="Label-flip probability (0 is the paper's Table 5 setting).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Restart r uses seed*1000+r for its data and initialization.")
@click.option("--address", help="Ray cluster address (e.g. 'auto' or ray://host:10001). Default: a local Ray.")
@click.option("--cpus-per-restart", type=float, help="CPUs each Ray task asks for, also its torch threads (default 1).")
@click.option("--no-ray", is_flag=True, help="Run the restarts sequentially in this process.")
@click.option("--output", "output_file", type=click.Path(dir_okay=False),
              help="Write per-restart results and the summary as JSON.")
@click.option("--format", "output_format", type=click.Choice(["table", "markdown", "json"]), default="table", show_default=True)
@click.option("--inconsistency", "with_inconsistency", is_flag=True,
              help="Also compute each final model's inconsistency score on the training environments (a second table).")
@click.option("--epsilon", type=float, default=0.01, show_default=True, help="The score's eps (with --inconsistency).")
@exits_2_on_bad_input
def reproduce_colored_mnist_irm(algorithms: str, restarts: int, data_dir: str | None, steps: int, label_noise: float,
                                seed: int, address: str | None, cpus_per_restart: float | None, no_ray: bool,
                                output_file: str | None, output_format: str, with_inconsistency: bool,
                                epsilon: float) -> None:
    """The Fishr paper's Table 2 (Colored MNIST, IRM setup): train / test / gray test accuracy, ours beside the paper's."""
    from pathlib import Path

    from fishr_tune import reproduce as rep

    names = rep.parse_algorithms(algorithms)
    if output_file:
        from fishr_tune.files import check_can_create

        check_can_create(output_file, "--output")
    config = rep.ScriptConfig(steps=steps, label_noise=label_noise,
                              inconsistency_epsilon=epsilon if with_inconsistency else None)
    config.check()
    say = functools.partial(click.echo, err=output_format == "json")

    def on_dataset(dataset: Any) -> None:
        say(f"Data (restart 0): {dataset.summary()}")
        say(f"Running {len(names)} algorithm(s) x {restarts} restart(s), {steps} full-batch steps, label noise {label_noise:g}")

    def save(reproduction: Any) -> None:
        if output_file:
            Path(output_file).parent.mkdir(parents=True, exist_ok=True)
            Path(output_file).write_text(json.dumps(reproduction.to_json(), indent=2))

    def on_result(result: Any, done: int, total: int, reproduction: Any) -> None:
        save(reproduction)
        score = f" inconsistency {result.inconsistency['inconsistency']:.4g}" if result.inconsistency else ""
        say(f"[{done}/{total}] {result.algorithm} restart {result.restart} (seed {result.seed}): train {100 * result.train_acc:.1f} "
            f"test {100 * result.test_acc:.1f} gray test {100 * result.gray_test_acc:.1f}{score} ({result.wall_s:.0f} s)")

    reproduction = rep.run_reproduction(
        names, restarts, config, seed=seed, data_dir=data_dir, use_ray=not no_ray, address=address,
        cpus_per_restart=cpus_per_restart, on_dataset=on_dataset, on_result=on_result,
        on_progress=functools.partial(click.echo, err=output_format == "json"),
    )
    save(reproduction)
    if output_file:
        say(f"Results: {output_file}")
    say(f"Wall time: {reproduction.wall_s:.0f} s ({reproduction.executor})")
    if output_format == "json":
        click.echo(json.dumps(reproduction.to_json(), indent=2))
    else:
        click.echo(rep.RENDERERS[output_format](reproduction))


@reproduce.command("fish-linear")
@click.option("--methods", default="ERM,IDGM,Fish,Fishr", show_default=True,
              help="Comma-separated: ERM, IDGM, Fish, Fishr.")
@click.option("--steps", type=int, default=100, show_default=True,
              help="Full-batch Adam steps (the accuracies depend on it: see BENCHMARKS.md).")
@click.option("--lr", type=float, default=0.01, show_default=True, help="Adam learning rate (every method).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the algorithms' random draws (the data is fixed).")
@click.option("--n-per-domain", type=int, default=1000, show_default=True,
              help="Inputs per domain (a multiple of 100).")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True)
@exits_2_on_bad_input
def reproduce_fish_linear(methods: str, steps: int, lr: float, seed: int, n_per_domain: int, output_format: str) -> None:
    """Shi et al. 2021's linear dataset (Figure 2 / Table 1): train/test accuracy and learned W, b beside the paper's."""
    from fishr_tune import fish_linear as fl

    names = fl.parse_methods(methods)
    settings = fl.Settings(steps=steps, lr=lr, seed=seed, n_per_domain=n_per_domain)
    settings.check()
    fl.build_domains(n_per_domain)  # bad sizes fail here, before any training
    results = fl.run(names, settings)
    if output_format == "json":
        click.echo(json.dumps(fl.to_json(results), indent=2))
    else:
        click.echo(fl.format_table(results, settings))
