"""Pruning: importance criteria, masks, unstructured and N:M pruning, schedules, sensitivity.

*What* to remove (:mod:`~nnzip.prune.importance`) is kept apart from *how* (masks and surgery).
Everything is a plain function first; the recipe stage ``prune`` wraps them, and :func:`prune`
runs that stage's config object on a model and returns a ``MethodResult`` (model, coverage,
details). Unstructured and N:M pruning cover every weight ``nnzip.core.find_weights`` finds
(attention, RNN gates, embeddings, functional parameters); a tied tensor is pruned once.

```python
from nnzip.prune import Prune, prune, magnitude_prune, fold_masks, prune_channels
result = prune(model, Prune(sparsity=0.5))   # in place; result.coverage says what was pruned
masks = magnitude_prune(model, 0.9)          # in place; masks keyed by "fc1.weight"
fold_masks(model, masks)                     # a plain model with exact zeros
smaller = prune_channels(model, 0.5, example_inputs)   # a copy with half the channels removed
wanda_prune(model, batches, 0.5)             # or sparsegpt_prune(model, batches, n=2, m=4)
prune_heads_and_neurons(encoder, batches, 0.3, 0.3)    # a BERT- or ViT-style encoder, in place
```
"""

from nnzip.data.splits import calibration_batches
from nnzip.prune.calibrated import (
    calibrated_prune,
    calibrated_prune_with_skips,
    calibrated_skip_reason,
    conv_input_rows,
    sparsegpt_prune,
    sparsegpt_prune_weight,
    wanda_mask,
    wanda_prune,
)
from nnzip.prune.importance import (
    Scores,
    channel_scores,
    fisher_diagonal,
    hessian_scores,
    hutchinson_diagonal,
    importance_scores,
    magnitude_scores,
    random_scores,
    task_loss,
    taylor_scores,
)
from nnzip.prune.masks import (
    Masks,
    apply_masks,
    fold_masks,
    global_masks,
    layer_masks,
    layer_sparsity,
    mask_hook,
    masks_from_model,
    nm_incompatible,
    nm_masks,
    nm_skip_reason,
    nm_skipped,
    prunable_names,
    prunable_weights,
    pruning_coverage,
    select_parameters,
    select_weights,
    sparsity_summary,
    weight_lookup,
)
from nnzip.prune.schedules import (
    cubic_sparsity,
    finetune_masked,
    gradual_prune,
    iterative_prune,
    iterative_sparsities,
    oneshot_prune,
)
from nnzip.prune.sensitivity import (
    allocate_sparsity,
    layer_sensitivity,
    preferred_sparsity,
    weighted_sparsity,
)
from nnzip.prune.stages import Prune, Sensitivity, layer_sizes, prune
from nnzip.prune.structured import PruneChannels, prunable_layers, prune_channels
from nnzip.prune.transformer import (
    DropLayers,
    PruneHeads,
    drop_layers,
    encoder_layers,
    encoder_linear_weights,
    encoder_shape,
    prune_heads,
    prune_heads_and_neurons,
    prune_neurons,
    transformer_blocks,
    unit_importance,
)
from nnzip.prune.unstructured import (
    compute_scores,
    magnitude_prune,
    masks_from_scores,
    nm_prune,
    nm_prune_with_skips,
    prune_unstructured,
)

__all__ = [
    "Masks", "Prune", "Scores", "allocate_sparsity", "apply_masks", "calibration_batches",
    "channel_scores", "compute_scores", "cubic_sparsity", "finetune_masked", "fisher_diagonal",
    "fold_masks", "global_masks", "gradual_prune", "hessian_scores", "hutchinson_diagonal",
    "importance_scores", "iterative_prune", "iterative_sparsities", "layer_masks",
    "layer_sensitivity", "layer_sparsity", "magnitude_prune", "magnitude_scores", "mask_hook",
    "masks_from_model", "masks_from_scores", "nm_incompatible", "nm_masks", "nm_prune",
    "oneshot_prune", "preferred_sparsity", "prunable_names", "prune_unstructured",
    "random_scores", "select_parameters", "sparsity_summary", "taylor_scores",
    "weighted_sparsity", "Sensitivity", "layer_sizes", "PruneChannels", "prune_channels",
    "prunable_layers", "calibrated_prune", "sparsegpt_prune", "sparsegpt_prune_weight",
    "wanda_mask", "wanda_prune", "DropLayers", "PruneHeads", "drop_layers", "encoder_layers",
    "encoder_linear_weights", "transformer_blocks",
    "encoder_shape", "prune_heads", "prune_heads_and_neurons", "prune_neurons", "unit_importance",
    "prune", "pruning_coverage", "nm_skip_reason", "nm_skipped", "nm_prune_with_skips",
    "calibrated_prune_with_skips", "calibrated_skip_reason", "conv_input_rows", "task_loss",
    "prunable_weights", "select_weights", "weight_lookup",
]
