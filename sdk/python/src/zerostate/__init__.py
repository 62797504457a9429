"""ZeroState for Python: write an agent as a decorated function, follow tasks from code.

    from zerostate import Agent

    agent = Agent("http://localhost:8080", token="zsa_…")

    @agent.task
    def echo(ctx):
        for word in ctx.query.split():
            ctx.output(word + " ")
        return {"words": len(ctx.query.split())}

    agent.run()
"""

from ._common import __version__
from ._errors import (
    ApiError,
    Canceled,
    Conflict,
    NonRetryable,
    NotFound,
    OutputLimitExceeded,
    Unauthorized,
    ZeroStateError,
)
from .agent import Agent, TaskContext
from .client import Client, EventStream, OutputStream
from .types import Attempt, Chunk, Event, OutputPage, Submitted, Task, TaskPage, TaskResult

__all__ = [
    "Agent",
    "ApiError",
    "Attempt",
    "Canceled",
    "Chunk",
    "Client",
    "Conflict",
    "Event",
    "EventStream",
    "NonRetryable",
    "NotFound",
    "OutputLimitExceeded",
    "OutputPage",
    "OutputStream",
    "Submitted",
    "Task",
    "TaskContext",
    "TaskPage",
    "TaskResult",
    "Unauthorized",
    "ZeroStateError",
    "__version__",
]
