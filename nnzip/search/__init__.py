"""Recipe search: Optuna over a space of recipes, a measured Pareto front, resumable and parallel.

    nnzip.search(model, data, "recipes/search-lenet5.yaml", out="runs/search",
                 objectives=["accuracy", "bytes"], constraints=["accuracy_drop<=0.5"], trials=40)

The space (:mod:`nnzip.search.space`) samples recipes; ``compress`` runs each; objectives and
constraints are report keys (:mod:`nnzip.search.objectives`); the front and its files come from
:mod:`nnzip.search.front`; :mod:`nnzip.search.runner` ties them to an Optuna study.
"""

from nnzip.search.front import dominates, front_report, load_front, pareto_indices
from nnzip.search.objectives import parse_constraint, parse_objectives
from nnzip.search.runner import SearchInterrupted, SearchResult, search
from nnzip.search.space import SearchSpace, load_space, parse_space

__all__ = ["SearchInterrupted", "SearchResult", "SearchSpace", "dominates", "front_report",
           "load_front", "load_space", "parse_constraint", "parse_objectives", "parse_space",
           "pareto_indices", "search"]
