"""fishr-tune: hyperparameter search for domain generalization (Fishr and DomainBed baselines)."""

from fishr_tune.hparams import default_hparams, random_hparams

__version__ = "0.1.0"
__all__ = ["default_hparams", "random_hparams", "__version__"]
