"""Tasks: what the data is for, which decides metrics, losses and the stages that fit
(:mod:`nnzip.tasks.base`)."""

from __future__ import annotations

from nnzip.errors import NnzipError
from nnzip.tasks.base import Task, stream_outputs
from nnzip.tasks.classify import Classification, LanguageModeling
from nnzip.tasks.embedding import SentenceEmbedding, SentenceSplits, sentence_data

TASKS: dict[str, Task] = {task.name: task for task in (Classification(), LanguageModeling(),
                                                        SentenceEmbedding())}


def task_of(data) -> Task:
    """The :class:`Task` of ``data`` (its ``task`` field; ``classify`` when it has none)."""
    name = getattr(data, "task", "classify")
    if name not in TASKS:
        raise NnzipError(f"unknown task {name!r} on data {getattr(data, 'name', '?')!r}: use one "
                         f"of {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "Classification", "LanguageModeling", "SentenceEmbedding", "SentenceSplits",
           "Task", "sentence_data", "stream_outputs", "task_of"]
