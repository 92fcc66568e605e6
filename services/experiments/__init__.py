"""Ablations run as ordinary jobs on the cluster: ``searchlab experiment <name> [--budget small|full]``.

- :mod:`.registry`  the named experiments (masksearch, zerosearch, searchr1), their arms as job specs, budgets
- :mod:`.run`       runs every arm's jobs through the trainer's API, then one eval job over all the arms
- :mod:`.report`    per-question scores -> mean ± SE, paired differences, report.md / report.json / PNG

See docs/experiments.md for what each arm means and how the budgets are kept equal.
"""
