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


def task_for(meta: Optional[dict]) -> Optional[Task]:
    """The Task named by a checkpoint's `task` metadata ({'name': ...}), or None for a plain LM or
    an unknown task."""
    if not isinstance(meta, dict):
        return None
    if meta.get("name") == MQAR_TASK.name and meta.get("vocab", MQAR_TASK.vocab_size) != MQAR_TASK.vocab_size:
        try:                           # MQAR at another vocabulary (e.g. the capacity sweep's)
            return mqar_task(meta["vocab"])
        except (ValueError, TypeError):
            return None
    return TASKS.get(meta.get("name"))


__all__ = ["Task", "Positions", "Score", "TokenError", "parse_ids", "score", "MAX_LEN", "INDUCTION", "SELECTIVE_COPYING", "MQAR_TASK", "mqar_task", "TASKS", "IdTask", "TextTask",
           "task_for"]
