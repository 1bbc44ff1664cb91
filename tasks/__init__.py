"""Tasks: a task's vocabulary, generator, presets, edits, positions of interest and scoring, and
the one definition of the Δ ratio and of memory channels (measures.py). numpy only.

    from tasks import task_for, INDUCTION
    task = task_for(lm.task)              # the task a checkpoint was trained on, or None
    ids = task.parse("3 7 S 9 S"); task.positions(ids).scored
"""
from typing import Optional

from .base import MAX_LEN, Positions, Score, Task, TokenError, parse_ids, score
from .induction import INDUCTION
from .mqar import MQAR_TASK, mqar_task
from .selective_copy import SELECTIVE_COPYING
from .text import IdTask, TextTask

TASKS = {t.name: t for t in (INDUCTION, SELECTIVE_COPYING, MQAR_TASK)}


def task_named(name, vocab: Optional[int] = None) -> Task:
    """The task called `name` at vocabulary `vocab` (None or the task's own: its default). The one
    place that knows which task takes a vocabulary: MQAR, at any even V (mqar.check_vocab); the
    others' vocabularies are fixed. Raises ValueError naming what is wrong."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    if vocab is None or vocab == TASKS[name].vocab_size:
        return TASKS[name]
    if name != MQAR_TASK.name:
        raise ValueError(f"the task option vocab is MQAR's; {name} has a fixed vocabulary "
                         f"({TASKS[name].vocab_size} tokens)")
    return mqar_task(vocab)


def task_for(meta: Optional[dict]) -> Optional[Task]:
    """The Task named by a checkpoint's `task` metadata ({'name': ..., 'vocab': ...}), or None for a
    plain LM, an unknown task or a vocabulary the task cannot have."""
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return None
    try:
        return task_named(meta["name"], meta.get("vocab"))
    except (ValueError, TypeError):
        return None


__all__ = ["Task", "Positions", "Score", "TokenError", "parse_ids", "score", "MAX_LEN", "INDUCTION", "SELECTIVE_COPYING", "MQAR_TASK", "mqar_task", "TASKS", "IdTask", "TextTask",
           "task_for", "task_named"]
