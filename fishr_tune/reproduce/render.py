"""The reproduction as the papers print it: a plain or markdown table of mean (std) per algorithm beside the papers'
numbers, with notes and, when scored, the inconsistency terms."""

from __future__ import annotations

from collections.abc import Callable

from fishr_tune.reproduce.config import (
    FISHR_VARIANTS,
    GRAYSCALE_ORACLE,
    METRICS,
    OPTIMAL_INVARIANT_PERCENT,
    PAPER_LABEL_NOISE,
    PAPER_STEPS,
    PAPER_TABLE2,
)
from fishr_tune.reproduce.run import INCONSISTENCY_TERMS, Reproduction, paper_numbers


def _cell(mean: float, std: float) -> str:
    return f"{mean:.1f} ± {std:.1f}"


def table_rows(reproduction: Reproduction) -> tuple[list[str], list[list[str]]]:
    """Header and rows: ours and the paper's per metric, and the test-accuracy difference (ours - paper)."""
    paper_setting = reproduction.config.label_noise == PAPER_LABEL_NOISE
    header = ["Algorithm", "Restarts", "Train acc", "Train (paper)", "Test acc", "Test (paper)", "Δ test",
              "Gray test acc", "Gray (paper)"]
    summary = reproduction.summary_percent()
    rows = []
    for algorithm in summary:
        ours = summary[algorithm]
        paper = paper_numbers(algorithm) if paper_setting else {}
        row = [algorithm, str(ours["train_acc"]["n"])]
        for metric in METRICS:
            row.append(_cell(ours[metric]["mean"], ours[metric]["std"]))
            row.append(_cell(*paper[metric]) if metric in paper else "n/a")
            if metric == "test_acc":
                row.append(f"{ours[metric]['mean'] - paper[metric][0]:+.1f}" if metric in paper else "n/a")
        rows.append(row)
    if paper_setting:
        optimum = OPTIMAL_INVARIANT_PERCENT
        rows.append(["Optimal invariant (hypothetical)", "-", "-", f"{optimum['train_acc']:.1f}", "-",
                     f"{optimum['test_acc']:.1f}", "-", "-", "-"])
    return header, rows


def notes(reproduction: Reproduction) -> list[str]:
    config = reproduction.config
    lines = ["Accuracy in percent, mean ± std (population) over restarts; paper: Fishr Table 2, 10 restarts."]
    if config.label_noise != PAPER_LABEL_NOISE:
        lines.append(f"Label noise {config.label_noise:g}: Table 2 uses 0.25, so its numbers are not shown.")
    if config.steps != PAPER_STEPS:
        lines.append(f"{config.steps} steps: the paper trains {PAPER_STEPS}, so the comparison is indicative only.")
    variants = [a for a in reproduction.algorithms if a in FISHR_VARIANTS and a not in PAPER_TABLE2]
    if variants:
        lines.append(f"{', '.join(variants)}: Table 6 variants (official script's definitions); their paper numbers "
                     "are not embedded.")
    if GRAYSCALE_ORACLE in reproduction.algorithms:
        lines.append(f"{GRAYSCALE_ORACLE}: IRM paper's Table 1 oracle (ERM on colour-free 14x14 digits), beside that "
                     "table's numbers (it reports no gray test).")
    if config.label_noise == PAPER_LABEL_NOISE:
        lines.append("Optimal invariant (hypothetical): IRM Table 1; with 25% label noise the digit alone gives 75%.")
    return lines


INCONSISTENCY_HEADER = ["Algorithm", "Restarts", "I^eps", "R_B - R_A", "eps*lambda", "lambda_max (A!=B)",
                        "I^eps diagonal", "Fishr penalty"]


def inconsistency_rows(reproduction: Reproduction) -> tuple[list[str], list[list[str]]]:
    """The score's table (empty when no restart computed it): mean ± std over restarts per term."""
    summary = reproduction.inconsistency_summary()
    rows = []
    for algorithm, terms in summary.items():
        rows.append([algorithm, str(terms["inconsistency"]["n"]),
                     *(f"{terms[name]['mean']:.4g} ± {terms[name]['std']:.2g}" for name in INCONSISTENCY_TERMS)])
    return INCONSISTENCY_HEADER, rows


def inconsistency_notes(reproduction: Reproduction) -> list[str]:
    epsilon = reproduction.config.inconsistency_epsilon
    return [f"Inconsistency score (eps {epsilon:g}) of the final model on the two training environments: "
            "I^eps = max over ordered pairs (A, B) of R_B - R_A + eps * lambda_max(H_B, H_A + delta I) on the head; "
            "R_B - R_A and eps*lambda are the pair that attains it; diagonal: H_e replaced by Fishr's gradient "
            "variances. See fishr_tune/inconsistency.py."]


def inconsistency_block(reproduction: Reproduction, markdown: bool) -> list[str]:
    """The score's table and its note, as lines to append after the accuracy table (none when not computed)."""
    header, rows = inconsistency_rows(reproduction)
    if not rows:
        return []
    if markdown:
        table = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        table += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        table = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
        table.insert(1, "  ".join("-" * w for w in widths))
    return ["", *table, "", *inconsistency_notes(reproduction)]


def format_table(reproduction: Reproduction) -> str:
    header, rows = table_rows(reproduction)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [""] + notes(reproduction) + inconsistency_block(reproduction, markdown=False))


def format_markdown(reproduction: Reproduction) -> str:
    header, rows = table_rows(reproduction)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines + [""] + notes(reproduction) + inconsistency_block(reproduction, markdown=True))


RENDERERS: dict[str, Callable[[Reproduction], str]] = {"table": format_table, "markdown": format_markdown}
