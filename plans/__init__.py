"""Experiment planners that budget GPU memory for nnzoo's methods (see :mod:`nnzoo.plans.registry`)."""
