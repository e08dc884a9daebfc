"""Fold BatchNorm into the convolution or linear layer before it, for inference.

In eval mode a BatchNorm is an affine map per channel, so ``bn(conv(x))`` equals one convolution
with rescaled weights and a new bias. Folding removes one operator per pair: at batch 1, where a
small model's time goes to per-operator overhead rather than arithmetic, that is a large part of
the latency (benchmarks/results/prune_structured.md). Static quantization needs it too: the
folded weights are the ones integer kernels run.

Pairs are found on a :mod:`torch.fx` trace (a BatchNorm whose only input is a Conv/Linear whose
output feeds nothing else); the arithmetic is torch's own ``fuse_conv_bn_eval`` /
``fuse_linear_bn_eval``. The model keeps its class and module names: each folded layer is
replaced by its fused copy and the BatchNorm by :class:`torch.nn.Identity`.

```python
from nnzip.models.fold import fold_batchnorm
folded = fold_batchnorm(model)      # a folded copy; ``model`` is untouched
```
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from nnzip.errors import NnzipError
from nnzip.models.surgery import fx_trace, set_module
from nnzip.stage import Context, Stage

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer, batchnorm) module names where the BatchNorm only normalises that layer's output."""
    if not any(isinstance(module, _BATCHNORMS) for module in model.modules()):
        return []  # nothing to fold, so no trace needed (models torch.fx cannot trace, too)
    traced = fx_trace(model, "fold BatchNorm in",
                      "remove the fold_batchnorm stage, or fold by hand with "
                      "torch.nn.utils.fusion.fuse_conv_bn_eval")
    modules = dict(model.named_modules())
    pairs = []
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BATCHNORMS):
            continue
        source = node.args[0] if node.args else None
        if not isinstance(source, fx.Node) or source.op != "call_module":
            continue
        layer = modules.get(source.target)
        if not isinstance(layer, (*_CONVS, nn.Linear)) or len(source.users) != 1:
            continue
        if isinstance(layer, nn.Linear) and not isinstance(modules[node.target], nn.BatchNorm1d):
            continue
        pairs.append((str(source.target), str(node.target)))
    used = [name for pair in pairs for name in pair]
    if len(used) != len(set(used)):  # a module called twice: folding it would change both calls
        shared = sorted({name for name in used if used.count(name) > 1})
        raise NnzipError(f"cannot fold BatchNorm: modules {shared} are called more than once in "
                         "forward; give each call its own module")
    return pairs


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The model with every foldable BatchNorm merged into the layer before it (eval mode).

    The result computes the same function as ``model.eval()`` up to float rounding; a model with
    nothing to fold comes back unchanged. Training the result trains without BatchNorm.
    """
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    for layer_name, bn_name in foldable_pairs(target):
        layer, bn = target.get_submodule(layer_name), target.get_submodule(bn_name)
        if not bn.track_running_stats or bn.running_mean is None:
            warnings.warn(f"{bn_name} keeps no running statistics and was not folded",
                          stacklevel=2)
            continue
        with torch.no_grad():
            fused = (fuse_conv_bn_eval(layer, bn) if isinstance(layer, _CONVS)
                     else fuse_linear_bn_eval(layer, bn))
        set_module(target, layer_name, fused)
        set_module(target, bn_name, nn.Identity())
    return target


class FoldBatchNorm(Stage):
    """Merge every BatchNorm into the convolution or linear layer before it (for deployment).

    Put it last (after any fine-tuning): the folded model has no BatchNorm left to train. The
    report row after this stage shows what folding alone gains.
    """

    kind = "fold_batchnorm"

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        pairs = foldable_pairs(model)
        folded = fold_batchnorm(model)
        context.record("folded", [f"{bn} -> {layer}" for layer, bn in pairs])
        context.record("batchnorm_left", sorted(
            name for name, module in folded.named_modules() if isinstance(module, _BATCHNORMS)))
        return folded
