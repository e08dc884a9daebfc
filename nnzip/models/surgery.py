"""Module surgery shared by the methods that replace layers (folding, quantization, ...)."""

from __future__ import annotations

from torch import fx, nn

from nnzip.errors import NnzipError


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` (e.g. ``"layer1.0.conv1"``) by ``module``."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def fx_trace(model: nn.Module, action: str, advice: str) -> fx.GraphModule:
    """``torch.fx.symbolic_trace(model)``, or an NnzipError saying that ``action`` (e.g. "fold
    BatchNorm in") needs a traceable model, and ``advice`` (what to do instead)."""
    try:
        return fx.symbolic_trace(model)
    except Exception as error:  # fx raises many types for untraceable Python
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise NnzipError(f"cannot {action} {type(model).__name__}: torch.fx could not trace it "
                         f"({type(error).__name__}: {first_line}); {advice}") from None
