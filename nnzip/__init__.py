"""nnzip: make trained neural networks smaller and faster, and prove it with honest measurements.

The public API is five verbs; everything else lives in the method families' packages:

    nnzip.apply(model, Prune(sparsity=0.5), data) run one method (any stage), in place; returns
                                                 MethodResult(model, coverage, details)
    nnzip.compress(model, "recipe.yaml", data)   run a recipe on a copy, measuring every stage
    nnzip.evaluate(model, data)                  every metric of one model, as a report entry
    nnzip.load_recipe("recipe.yaml")             parse and validate a recipe
    nnzip.search(model, data, "space.yaml", out=) the measured Pareto front of recipes (Optuna)
    nnzip.save(model, "folder") / nnzip.load()   the model artifact (safetensors + JSON spec,
                                                 or one compressed file: "model.nnz")
"""

__version__ = "0.1.0"

# The names below shadow the sub-packages of the same name on purpose (``nnzip.evaluate`` is the
# function); import sub-modules with ``from nnzip.evaluate import ...``.
from nnzip.errors import NnzipError  # noqa: E402
from nnzip.evaluate import evaluate  # noqa: E402
from nnzip.models import load_model as load  # noqa: E402
from nnzip.models import save_model as save  # noqa: E402
from nnzip.pipeline import apply, compress  # noqa: E402
from nnzip.recipe import load_recipe  # noqa: E402
from nnzip.search import search  # noqa: E402

__all__ = ["NnzipError", "__version__", "apply", "compress", "evaluate", "load", "load_recipe",
           "save", "search"]
