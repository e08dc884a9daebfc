"""Knowledge distillation: the KD loss (Hinton et al. 2015), FitNets feature hints and the
``distill`` stage; sentence-embedding distillation (:mod:`nnzip.distill.embedding`).

Any fine-tuning stage distils by ``distill: {temperature: 4, alpha: 0.9}`` (see
:class:`nnzip.train.FinetunedStage`); :func:`distill` trains a student on its own.
"""

from nnzip.distill.hints import FeatureRecorder, HintedStudent, build_adapters, hint_loss
from nnzip.distill.losses import DistillOptions, distillation_loss, kd_loss

__all__ = ["Distill", "DistillOptions", "FeatureRecorder", "HintedStudent", "build_adapters",
           "distill", "distill_embeddings", "distillation_loss", "embedding_loss", "hint_loss",
           "kd_loss"]


def __getattr__(name: str):
    # nnzip.train imports nnzip.distill.losses (the fine-tune option of every stage), and
    # distill()/Distill use nnzip.train: importing them lazily keeps that from being a cycle.
    if name in ("distill", "Distill"):
        from nnzip.distill import stages
        return getattr(stages, name)
    if name in ("distill_embeddings", "embedding_loss"):
        from nnzip.distill import embedding
        return getattr(embedding, name)
    raise AttributeError(f"module 'nnzip.distill' has no attribute {name!r}")
