"""A streaming "LLM" agent: emits its answer token by token as task output, reports
progress, and returns the whole text as the result.

The model is a deterministic fake (so the example runs anywhere and its output can be
checked); replace ``fake_model`` with a real client's streaming call. Run it with:

    ZEROSTATE_SERVER=http://localhost:8080 ZEROSTATE_AGENT_TOKEN=zsa_… \
        python examples/streaming_agent.py
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Iterator

from zerostate import Agent, NonRetryable, TaskContext

VOCABULARY = (
    "the agent streams each token as soon as the model produces it so a page "
    "that follows the task sees the answer grow word by word and a client that "
    "reconnects misses nothing"
).split()


def fake_model(prompt: str, max_tokens: int = 40) -> Iterator[str]:
    """A stand-in for an LLM: the same prompt always yields the same tokens."""
    seed = hashlib.sha256(prompt.encode("utf-8")).digest()
    for i in range(max_tokens):
        word = VOCABULARY[(seed[i % len(seed)] + i) % len(VOCABULARY)]
        yield word if i == 0 else " " + word
        time.sleep(float(os.environ.get("FAKE_MODEL_DELAY_S", "0.02")))


agent = Agent(
    os.environ.get("ZEROSTATE_SERVER", "http://localhost:8080"),
    os.environ.get("ZEROSTATE_AGENT_TOKEN"),
    concurrency=int(os.environ.get("CONCURRENCY", "2")),
)


@agent.task
def answer(ctx: TaskContext) -> dict:
    if not ctx.query.strip():
        raise NonRetryable("empty prompt")
    ctx.log(f"attempt {ctx.attempt}: generating\n")
    tokens = []
    for n, token in enumerate(fake_model(ctx.query), start=1):
        ctx.output(token)  # raises Canceled if the user cancels: nothing else to do
        tokens.append(token)
        if n % 10 == 0:
            ctx.progress(n * 100 // 40)
    return {"text": "".join(tokens), "tokens": len(tokens)}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent.run()
