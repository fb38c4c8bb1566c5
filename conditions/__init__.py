"""Task conditions: parse the user's condition string and evaluate it against facts.

A pure library (no I/O; the standard library and google-re2, which runs command patterns in
linear time, see :mod:`conditions.pattern`). See :mod:`conditions.parse` for the language and
:mod:`conditions.evaluate` for the evaluator.
"""

from .evaluate import (
    READY,
    Outcome,
    QueueView,
    Status,
    TaskFacts,
    Verdict,
    WorkerFacts,
    evaluate,
    evaluate_queue,
    evaluate_worker,
)
from .parse import (
    QUEUE_PREDICATES,
    SCOPES,
    WORKER_PREDICATES,
    Condition,
    ConditionError,
    dependency_ids,
    format_conditions,
    parse,
    validate_tag,
    validate_task_id,
)
from .pattern import PatternError, compile_pattern

__all__ = [
    "QUEUE_PREDICATES",
    "READY",
    "SCOPES",
    "WORKER_PREDICATES",
    "Condition",
    "ConditionError",
    "Outcome",
    "PatternError",
    "QueueView",
    "Status",
    "TaskFacts",
    "Verdict",
    "WorkerFacts",
    "compile_pattern",
    "dependency_ids",
    "evaluate",
    "evaluate_queue",
    "evaluate_worker",
    "format_conditions",
    "parse",
    "validate_tag",
    "validate_task_id",
]
