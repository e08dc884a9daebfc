"""Put any model in evaluation mode for a measurement and give it back as it was.

``torch.export``'s ``.module()`` refuses ``.eval()`` / ``.train()`` (its train/eval behaviour is
fixed when it is exported), so the switch is tried and skipped where a module refuses it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from torch import nn

log = logging.getLogger(__name__)


def _set_training(model: nn.Module, training: bool) -> None:
    try:
        model.train(training)
    except NotImplementedError:
        # Exported graph modules bake their mode in at export time; nothing to switch.
        log.debug("%s does not support train()/eval(); using it as exported",
                  type(model).__name__)


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
