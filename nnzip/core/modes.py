"""Modes a measurement or a capture runs in, given back as they were afterwards.

:func:`eval_mode` puts any model in evaluation mode. ``torch.export``'s ``.module()`` refuses
``.eval()`` / ``.train()`` (its train/eval behaviour is fixed when it is exported), so the switch
is tried and skipped where a module refuses it. :func:`attention_fast_path_off` makes attention
call its Linear layers, so that hooks capturing their inputs see them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

log = logging.getLogger(__name__)


def _set_training(model: nn.Module, training: bool) -> None:
    try:
        model.train(training)
    except NotImplementedError:
        # Exported graph modules bake their mode in at export time; nothing to switch.
        log.debug("%s does not support train()/eval(); using it as exported",
                  type(model).__name__)


def set_eval(model: nn.Module) -> nn.Module:
    """``model`` in eval mode (left as exported where the module refuses the switch)."""
    _set_training(model, False)
    return model


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the body with ``model`` in eval mode, then restore its previous training flag."""
    was_training = bool(getattr(model, "training", False))
    _set_training(model, False)
    try:
        yield model
    finally:
        if was_training:
            _set_training(model, True)


@contextlib.contextmanager
def attention_fast_path_off() -> Iterator[None]:
    """Turn off the fused inference path of ``nn.MultiheadAttention`` / ``TransformerEncoder``.

    In eval mode without gradients, ``nn.TransformerEncoderLayer`` runs one fused kernel that
    calls neither its attention nor its Linear layers, so no hook would see their inputs. The
    switch is PyTorch's own (``torch.backends.mha``) and is restored afterwards.
    """
    backend = getattr(torch.backends, "mha", None)
    if backend is None or not hasattr(backend, "set_fastpath_enabled"):
        yield
        return
    was_enabled = backend.get_fastpath_enabled()
    backend.set_fastpath_enabled(False)
    try:
        yield
    finally:
        backend.set_fastpath_enabled(was_enabled)
