"""Mutation testing of the pure folds: hand-made faults in projections/ (and the default rules) that
the unit tests, the independent oracle's above all, must catch. ``python -m tests.mutation.run``."""
