"""Plumbing every method family shares, and which imports none of them (STYLE.md, "Layering").

- :mod:`nnzip.core.modes`: run a measurement in eval mode and give the model back as it was;
- :mod:`nnzip.core.select`: the one layer selection (``layers`` + ``exclude``, names or globs);
- :mod:`nnzip.core.weights`: every weight of a model wherever it lives, tied weights as one;
- :mod:`nnzip.core.coverage`: what a method changed, per parameter, and why it left the rest;
- :mod:`nnzip.core.capture`: run calibration batches and capture a layer's inputs or outputs;
- :mod:`nnzip.core.obs`: the Hessian and Optimal Brain Surgeon sweep GPTQ and SparseGPT share;
- :mod:`nnzip.core.outputs`: classification outputs of any rank as one row per prediction.
"""

from nnzip.core.coverage import Coverage, MethodResult, ParamRecord, build_coverage
from nnzip.core.modes import eval_mode
from nnzip.core.select import LayerSelection, matches, select_names, select_weights
from nnzip.core.weights import Weight, find_weights, unique_parameters

__all__ = ["Coverage", "LayerSelection", "MethodResult", "ParamRecord", "Weight",
           "build_coverage", "eval_mode", "find_weights", "matches", "select_names",
           "select_weights", "unique_parameters"]
