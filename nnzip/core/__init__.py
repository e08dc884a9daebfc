"""Plumbing every method family shares, and which imports none of them (STYLE.md, "Layering").

- :mod:`nnzip.core.modes`: run a measurement in eval mode and give the model back as it was;
- :mod:`nnzip.core.select`: the one layer selection (``layers`` + ``exclude``, names or globs);
- :mod:`nnzip.core.weights`: every weight of a model wherever it lives, tied weights as one;
- :mod:`nnzip.core.coverage`: what a method changed, per parameter, and why it left the rest.
"""

from nnzip.core.coverage import Coverage, MethodResult, ParamRecord, build_coverage
from nnzip.core.modes import eval_mode
from nnzip.core.select import LayerSelection, matches, select_names, select_weights
from nnzip.core.weights import Weight, find_weights, unique_parameters

__all__ = ["Coverage", "LayerSelection", "MethodResult", "ParamRecord", "Weight",
           "build_coverage", "eval_mode", "find_weights", "matches", "select_names",
           "select_weights", "unique_parameters"]
