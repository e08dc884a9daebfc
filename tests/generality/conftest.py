"""The generality suite: every public method on every user-style model family.

Families live in :mod:`nnzip.models.examples`; each test module covers one method family and
asserts a correct result or a clear NnzipError naming the layer, never a crash inside torch and
never a silent shortfall.
"""

import pytest
from generality_helpers import FAMILIES, example, example_splits, relative_error  # noqa: F401


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param
