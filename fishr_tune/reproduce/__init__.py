"""Reproduction of the Fishr paper's Table 2: Colored MNIST in the IRM setup (Rame et al., ICML 2022, Sec. 6.A).

Faithful to the official script (alexrame/fishr ``coloredmnist/train_coloredmnist.py``, itself the IRM repo's
``colored_mnist/main.py``), not to the DomainBed protocol: full-batch steps on two training environments,
a single-logit MLP trained with binary cross-entropy, an explicit L2 term, the IRM paper's tuned
hyperparameters (shared by every method), and the script's penalty-annealing/rescaling rule. Restarts run as
Ray tasks (one per algorithm and restart), or sequentially in-process with ``use_ray=False``.

The script's reductions are kept on purpose even where DomainBed differs: its Fishr penalty *sums* the squared
differences (DomainBed averages them), and the penalty weight below was tuned for those magnitudes.

Two Fishr variants of the paper's Table 6 (Appendix C.2.4) follow the script's ``compute_grads_variance``:
Fishr-notcentered (the gradients' second moment, not centred) and Fishr-offdiagonal (each head parameter
tensor's full centred covariance, divided by n * p_t). The paper's numbers for them are not embedded (n/a).

ERM-grayscale is the IRM paper's Table 1 oracle (its script's ``--grayscale_model``): ERM whose model never sees
the colour, since it adds the two colour channels before the MLP (14x14 inputs). It is shown beside IRM's Table 1
numbers, with that table's hypothetical optimal invariant model (75 / 75: the label noise caps what the digit
shape alone can predict) as a reference line.

Modules: config (settings, the papers' numbers), model (the script's MLP, loss and penalties), restarts (one run of
the loop), run (all restarts, in process or on Ray), render (the tables). The package's names are its interface.
"""

from fishr_tune.reproduce.config import (
    DATASET_NAME,
    DEFAULT_ALGORITHMS,
    FISHR_VARIANTS,
    GRAY_TEST_ENV,
    GRAYSCALE_ORACLE,
    IRM_TABLE1,
    METRICS,
    OPTIMAL_INVARIANT_PERCENT,
    PAPER_LABEL_NOISE,
    PAPER_STEPS,
    PAPER_TABLE2,
    REPRODUCIBLE_ALGORITHMS,
    TEST_ENV,
    TRAIN_ENVS,
    UNPENALIZED,
    ScriptConfig,
    parse_algorithms,
    parse_name_list,
    restart_seed,
)
from fishr_tune.reproduce.model import (
    IrmMLP,
    StepOutput,
    fishr_penalty_summed,
    irm_penalty_full_batch,
    mean_accuracy,
    mean_nll,
    remove_color,
    training_loss,
    vrex_penalty,
)
from fishr_tune.reproduce.render import (
    RENDERERS,
    format_markdown,
    format_table,
    table_rows,
)
from fishr_tune.reproduce.restarts import (
    RestartResult,
    build_restart_dataset,
    restart_inconsistency,
    train_restart,
)
from fishr_tune.reproduce.run import Reproduction, paper_numbers, run_reproduction

__all__ = [
    "DATASET_NAME", "DEFAULT_ALGORITHMS", "FISHR_VARIANTS", "GRAYSCALE_ORACLE", "GRAY_TEST_ENV", "IRM_TABLE1",
    "METRICS", "OPTIMAL_INVARIANT_PERCENT", "PAPER_LABEL_NOISE", "PAPER_STEPS", "PAPER_TABLE2", "RENDERERS",
    "REPRODUCIBLE_ALGORITHMS", "TEST_ENV", "TRAIN_ENVS", "UNPENALIZED", "IrmMLP", "Reproduction", "RestartResult",
    "ScriptConfig", "StepOutput", "build_restart_dataset", "fishr_penalty_summed", "format_markdown",
    "format_table", "irm_penalty_full_batch", "mean_accuracy", "mean_nll", "paper_numbers", "parse_algorithms",
    "parse_name_list", "remove_color", "restart_inconsistency", "restart_seed", "run_reproduction", "table_rows",
    "train_restart", "training_loss", "vrex_penalty",
]
