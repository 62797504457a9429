"""The shapes the API answers with, as typed dictionaries (they are the parsed JSON,
unchanged), and the two small records the streams yield."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # pragma: no cover - older Pythons
    from typing_extensions import NotRequired, TypedDict  # type: ignore[assignment]


class Task(TypedDict):
    """A task as ``GET /api/v1/tasks/{id}`` shows it."""

    id: str
    user_id: str
    query: str
    capability: str
    priority: str
    status: str
    progress: int
    agent_id: Optional[str]
    result: Any
    error: Optional[str]
    attempts: int
    max_attempts: NotRequired[int]
    idempotency_key: NotRequired[Optional[str]]
    run_at: NotRequired[Optional[str]]
    queue_position: NotRequired[Optional[int]]
    output_bytes: NotRequired[int]
    created_at: str
    started_at: Optional[str]
    completed_at: Optional[str]
    updated_at: str


class Submitted(TypedDict):
    """The answer to a submit or a retry."""

    task_id: str
    status: str
    task: Task
    #: True when an earlier submit with the same ``idempotency_key`` is answered again.
    duplicate: NotRequired[bool]


class TaskPage(TypedDict):
    tasks: List[Task]
    next_cursor: Optional[str]


class TaskResult(TypedDict):
    task_id: str
    status: str
    result: Any
    error: Optional[str]
    duration_ms: Optional[int]


class Attempt(TypedDict):
    attempt: int
    agent_id: Optional[str]
    started_at: str
    ended_at: Optional[str]
    outcome: str
    error: Optional[str]


@dataclass(frozen=True)
class Chunk:
    """One piece of a task's output, numbered from 1 without gaps."""

    seq: int
    #: ``"output"`` or ``"log"``.
    stream: str
    text: str
    #: When the server stored it (RFC 3339), if the source carried it.
    at: Optional[str] = None

    @classmethod
    def from_json(cls, raw: Dict[str, Any]) -> "Chunk":
        return cls(
            seq=int(raw["seq"]),
            stream=str(raw.get("stream", "output")),
            text=str(raw.get("text", "")),
            at=raw.get("at"),
        )


@dataclass(frozen=True)
class OutputPage:
    """``GET /api/v1/tasks/{id}/output?after=``: chunks after a position."""

    chunks: List[Chunk]
    #: The position to ask from next time.
    next: int
    #: True once the task is finished and every chunk has been returned.
    complete: bool


@dataclass(frozen=True)
class Event:
    """One real-time message (``task_update``, ``task_output``, ``system``, …)."""

    type: str
    data: Dict[str, Any] = field(default_factory=dict)
    #: Position in the user's stream; None for frames kept out of the resume history
    #: (``task_output``) and for control messages.
    cursor: Optional[str] = None
    timestamp: Optional[str] = None
