"""Results tables in DomainBed's shape (rows: algorithms; columns: test environments, then the average), as text
(markdown, latex, json) or Rich tables on the terminal."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from fishr_tune.analysis.inspect import SelectedScore

OUTPUT_FORMATS = ("table", "markdown", "latex", "json")
SELECTION_TITLES = {
    "training_domain": "training-domain validation",
    "leave_one_out": "leave-one-domain-out cross-validation",
    "oracle": "test-domain validation (oracle)",
}


def env_label(dataset: str, test_env: str) -> str:
    if test_env == "avg":
        return "Avg"
    from fishr_tune.data import DATASET_ENVIRONMENTS  # imports torch (~3 s): only when a table names environments

    names = DATASET_ENVIRONMENTS.get(dataset)
    index = int(test_env)
    return names[index] if names and index < len(names) else f"env{index}"


def result_grid(summary: pd.DataFrame, dataset: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows for one dataset: each cell 'mean ± se' in percent, 'X' where a result is missing."""
    part = summary[summary["dataset"] == dataset]
    envs = sorted({e for e in part["test_env"] if e != "avg"}, key=int)
    columns = [*envs, "avg"]
    header = ["Algorithm", *(env_label(dataset, e) for e in columns)]
    rows = []
    for algorithm, algo_part in part.groupby("algorithm", sort=True):
        cells = {row["test_env"]: f"{row['mean']:.1f}" + ("" if pd.isna(row["se"]) else f" ± {row['se']:.1f}")
                 for row in algo_part.to_dict("records")}
        rows.append([str(algorithm), *(cells.get(e, "X") for e in columns)])
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """A cell as LaTeX text: specials escaped, ± as $\\pm$."""
    escaped = "".join(_LATEX_SPECIALS.get(char, char) for char in text)
    return escaped.replace("±", r"$\pm$")


def latex(header: list[str], rows: list[list[str]]) -> str:
    lines = [r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(cell) for cell in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def render(summaries: Mapping[str, pd.DataFrame], fmt: str) -> str:
    """All selection methods and datasets as text in `fmt` (table and markdown print the same pipe tables)."""
    if fmt == "json":
        return json.dumps(results_json(summaries), indent=2, sort_keys=True)
    blocks = []
    for method, summary in summaries.items():
        if summary.empty:
            blocks.append(f"Model selection: {SELECTION_TITLES[method]}\n(no group has the runs this method needs)")
            continue
        for dataset in sorted(summary["dataset"].unique()):
            header, rows = result_grid(summary, dataset)
            title = f"Model selection: {SELECTION_TITLES[method]} — {dataset} (test accuracy, %, mean ± s.e. over trial seeds)"
            body = latex(header, rows) if fmt == "latex" else markdown(header, rows)
            blocks.append(f"{'% ' if fmt == 'latex' else ''}{title}\n{body}")
    return "\n\n".join(blocks)


def hparams_text(config_json: str, names: Sequence[str] | None = None) -> str:
    """`lr=0.001, lambda=100` for the names given (the varying ones), or every hyperparameter when names is None."""
    config = json.loads(config_json)
    shown = [n for n in (names if names is not None else sorted(config)) if n in config]
    if not shown:
        return "(no searched hyperparameter)"
    return ", ".join(f"{n}={_short(config[n])}" for n in shown)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if not isinstance(value, str) else value


SELECTED_HEADER = ["Algorithm", "Test env", "Trial seed", "Run", "Step", "Val %", "Test %", "Hyperparameters"]


def selected_hparams_table(
    selected: pd.DataFrame, dataset: str, varying: Mapping[tuple[str, str], Sequence[str]] | None = None,
) -> list[list[str]]:
    """One row per group of `dataset`: which run and checkpoint was chosen, and its (varying) hyperparameters."""
    rows = []
    part = selected[selected["dataset"] == dataset].sort_values(["algorithm", "test_env", "trial_seed"], kind="mergesort")
    for row in part.to_dict("records"):
        names = None if varying is None else varying.get((str(row["dataset"]), str(row["algorithm"])))
        rows.append([
            str(row["algorithm"]), env_label(str(row["dataset"]), str(int(row["test_env"]))), str(int(row["trial_seed"])),
            str(row["run"]), str(int(row["step"])), f"{100 * float(row['val_acc']):.2f}", f"{100 * float(row['test_acc']):.2f}",
            hparams_text(str(row["config"]), names),
        ])
    return rows


def render_selected(
    selected: Mapping[str, pd.DataFrame], fmt: str, varying: Mapping[tuple[str, str], Sequence[str]] | None = None,
) -> str:
    """The selected run, checkpoint and hyperparameters per (algorithm, test env, trial seed), per method and dataset."""
    blocks = []
    for method, frame in selected.items():
        for dataset in sorted(frame["dataset"].unique()) if not frame.empty else []:
            rows = selected_hparams_table(frame, dataset, varying)
            title = f"Selected hyperparameters: {SELECTION_TITLES[method]} — {dataset}"
            body = latex(SELECTED_HEADER, rows) if fmt == "latex" else markdown(SELECTED_HEADER, rows)
            blocks.append(f"{'% ' if fmt == 'latex' else ''}{title}\n{body}")
    return "\n\n".join(blocks)


def results_json(summaries: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """{selection: {dataset: {algorithm: {"<test env>": {"mean", "se", "n"}, ..., "avg": {...}}}}}."""
    out: dict[str, Any] = {}
    for method, summary in summaries.items():
        node = out.setdefault(method, {})
        for row in summary.to_dict("records"):
            se = None if pd.isna(row["se"]) else float(row["se"])  # no complete trial seed behind an average
            cell = {"mean": float(row["mean"]), "se": se, "n": int(row["n"])}
            node.setdefault(str(row["dataset"]), {}).setdefault(str(row["algorithm"]), {})[str(row["test_env"])] = cell
    return out


def print_analysis(summaries: Mapping[str, pd.DataFrame], selected: Mapping[str, pd.DataFrame],
                   varying: Mapping[tuple[str, str], Sequence[str]]) -> None:
    """Rich tables: results per method and dataset, then the selected run and hyperparameters per group."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    for method, summary in summaries.items():
        title = SELECTION_TITLES[method]
        if summary.empty:
            console.print(f"Model selection: {title}: no group has the runs this method needs")
            continue
        for dataset in sorted(summary["dataset"].unique()):
            header, rows = result_grid(summary, dataset)
            table = Table(title=f"{dataset}: {title} (test accuracy %, mean ± s.e. over trial seeds)")
            for i, column in enumerate(header):
                table.add_column(column, justify="left" if i == 0 else "right")
            for row in rows:
                table.add_row(*row)
            console.print(table)
            chosen = Table(title=f"{dataset}: selected by {title}")
            for i, column in enumerate(SELECTED_HEADER):
                chosen.add_column(column, justify="right" if 2 <= i <= 6 else "left")
            for row in selected_hparams_table(selected[method], dataset, varying):
                chosen.add_row(*row)
            console.print(chosen)


def print_inconsistency(scores: Mapping[str, Sequence[SelectedScore]], epsilon: float) -> None:
    """One Rich table per selection method: the selected models' scores, or why there is none."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    for method, found in scores.items():
        table = Table(title=f"Inconsistency I^eps (eps {epsilon:g}) of the models selected by {SELECTION_TITLES[method]}")
        for column in ("Dataset", "Algorithm", "Test env", "Trial seed", "Run", "Step", "I^eps", "I^eps diagonal", "Note"):
            table.add_column(column)
        for s in found:
            group = s.selected
            table.add_row(group["dataset"], group["algorithm"], str(group["test_env"]), str(group["trial_seed"]),
                          group["run"], str(group["step"]),
                          "X" if s.inconsistency is None else f"{s.inconsistency:.5f}",
                          "X" if s.inconsistency_diagonal is None else f"{s.inconsistency_diagonal:.5f}", s.note)
        console.print(table)
