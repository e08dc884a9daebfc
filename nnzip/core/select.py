"""One way to select layers, for every method: ``layers`` + ``exclude``, names or glob patterns.

A pattern names a parameter (``fc1.weight``), a module (``fc1``: every parameter under it) or a
glob over either (``blocks.*.attn``, ``*.out_proj``; ``*`` also crosses dots). ``layers`` (default:
everything the method can change) keeps what any pattern matches; ``exclude`` then removes what
any of its patterns matches. A pattern that matches nothing is an error listing what it could have
matched, so a typo never silently selects nothing, or everything.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from fnmatch import fnmatchcase

from pydantic import BaseModel, Field
from torch import nn

from nnzip.core.weights import Weight, find_weights
from nnzip.errors import NnzipError


def matches(name: str, pattern: str) -> bool:
    """Whether ``pattern`` names ``name``: the name itself, a module above it, or a glob."""
    return (fnmatchcase(name, pattern) or name.startswith(pattern + ".")
            or fnmatchcase(name, pattern + ".*"))


def _unmatched(pattern: str, option: str, candidates: Sequence[str],
               others: Sequence[str], what: str) -> NnzipError:
    modules = sorted({name.rsplit(".", 1)[0] for name in candidates if "." in name})
    close = difflib.get_close_matches(pattern, list(candidates) + modules, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    if any(matches(name, pattern) for name in others):
        return NnzipError(f"{option}: {pattern!r} names only what this method does not change "
                          f"(it changes {what}); name one of: {', '.join(modules or candidates)}")
    return NnzipError(f"{option}: {pattern!r} matches no {what} of this model{hint}; the "
                      f"{what} are under: {', '.join(modules or candidates)}")


def select_names(candidates: Sequence[str], layers: Sequence[str] | None = None,
                 exclude: Sequence[str] = (), *, others: Sequence[str] = (),
                 what: str = "weights") -> list[str]:
    """The ``candidates`` (in their order) that ``layers`` selects and ``exclude`` does not.

    ``others`` are names the model has but the method cannot change: a pattern naming only those
    gets an error that says so, instead of "matches nothing".
    """
    for option, patterns in (("layers", layers or ()), ("exclude", exclude)):
        if isinstance(patterns, str):
            raise NnzipError(f"{option} must be a list of names or patterns, got the string "
                             f"{patterns!r}: write [{patterns!r}]")
        for pattern in patterns:
            if not any(matches(name, pattern) for name in candidates):
                raise _unmatched(pattern, option, candidates, others, what)
    chosen = [name for name in candidates
              if layers is None or any(matches(name, pattern) for pattern in layers)]
    selected = [name for name in chosen
                if not any(matches(name, pattern) for pattern in exclude)]
    if not selected:
        raise NnzipError(f"no {what} left to change: 'layers' selects {len(chosen)} and "
                         "'exclude' removes them all; keep at least one")
    return selected


def select_weights(model: nn.Module, layers: Sequence[str] | None = None,
                   exclude: Sequence[str] = (), *, what: str = "weights") -> list[Weight]:
    """The weights of ``model`` (:func:`nnzip.core.find_weights`) that ``layers`` selects
    (default: all) and ``exclude`` does not, tied tensors once.

    Patterns may use any name of a tied tensor; a tied tensor excluded under one of its names is
    excluded (it cannot be half compressed).
    """
    weights = find_weights(model)
    names_of = {weight.name: (weight.name, *weight.aliases) for weight in weights}
    every_name = [name for names in names_of.values() for name in names]
    known = set(every_name)
    others = [name for name, _ in model.named_parameters(remove_duplicate=False)
              if name not in known]
    select_names(every_name, layers, exclude, others=others, what=what)  # clear errors

    def named(weight: Weight, patterns: Sequence[str]) -> bool:
        return any(matches(name, pattern) for name in names_of[weight.name]
                   for pattern in patterns)

    selected = [weight for weight in weights
                if (layers is None or named(weight, layers)) and not named(weight, exclude)]
    if not selected:
        raise NnzipError(f"no {what} left: 'exclude' removes every one 'layers' selects (a tied "
                         "weight is excluded by any of its names); keep at least one")
    return selected


def check_layer_names(model: nn.Module, option: str, patterns: Sequence[str]) -> None:
    """Refuse a name or pattern in ``option`` that matches no parameter (nor module holding one)
    of ``model``, with a did-you-mean: the recipe-wide check made before any work. Each method
    then selects among the weights it can change (:func:`select_weights`), with its own errors.
    """
    if isinstance(patterns, str):
        raise NnzipError(f"{option} must be a list of names or patterns, got the string "
                         f"{patterns!r}: write [{patterns!r}]")
    names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    for pattern in patterns:
        if not any(matches(name, pattern) for name in names):
            modules = sorted({name.rsplit(".", 1)[0] for name in names if "." in name})
            close = difflib.get_close_matches(pattern, names + modules, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            shown = ", ".join(modules[:12]) + (f" and {len(modules) - 12} more"
                                               if len(modules) > 12 else "")
            raise NnzipError(f"{option}: {pattern!r} matches no layer or parameter of "
                             f"{type(model).__name__}{hint}; its layers: {shown or '(none)'}")


class LayerSelection(BaseModel):
    """The two selection fields every method config (and recipe stage) has."""

    layers: list[str] | None = Field(
        None, description="names or glob patterns of the parameters/modules to change "
                          "(default: every one the method can change)")
    exclude: list[str] = Field(default_factory=list,
                               description="names or glob patterns to leave unchanged")
