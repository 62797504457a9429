"""An agent process for the SIGTERM test: its handler streams a line, then works until it
is told to stop. Usage: python agent_process.py SERVER (token in ZEROSTATE_AGENT_TOKEN)."""

import logging
import sys

from zerostate import Agent, TaskContext

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
agent = Agent(sys.argv[1])


@agent.task
def work(ctx: TaskContext) -> str:
    ctx.progress(10, "started")
    print(f"started {ctx.id} attempt {ctx.attempt}", flush=True)
    # Works until the agent is stopped (SIGTERM) or the task is canceled.
    ctx.cancel_event.wait(300)
    return "not reached"


agent.run()
print("agent exited", flush=True)
