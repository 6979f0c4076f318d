"""`python -m fishr_tune.cli`: the same command as the `fishr-tune` console script."""

from fishr_tune.cli import main

main()
