"""The agent SDK against the real server: streaming, cancellation, failures and retries,
SIGTERM, sync and async handlers, concurrency, reconnection after a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from typing import Any, List

import httpx
import pytest

from conftest import PYTHON, WAIT_S, Server, User, running, wait_until
from zerostate import Canceled, NonRetryable, TaskContext

HERE = os.path.dirname(os.path.abspath(__file__))


class CountingTransport(httpx.AsyncHTTPTransport):
    """Counts the agent's runtime ``output`` requests."""

    def __init__(self) -> None:
        super().__init__()
        self.output_calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/output"):
            self.output_calls += 1
        return await super().handle_async_request(request)


def all_output(user: User, task_id: str) -> List[Any]:
    chunks, after = [], 0
    while True:
        page = user.client.output(task_id, after=after)
        chunks.extend(page.chunks)
        if not page.chunks:
            return chunks
        after = page.next


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_streams_1000_chunks_and_completes(server: Server, user: User, kind: str) -> None:
    transport = CountingTransport()
    agent = user.agent(transport=transport)

    if kind == "sync":

        @agent.task
        def handle(ctx: TaskContext) -> Any:
            for i in range(1000):
                ctx.output(f"tok{i} ")
            return {"chunks": 1000, "query": ctx.query}

    else:

        @agent.task
        async def handle(ctx: TaskContext) -> Any:
            for i in range(1000):
                ctx.output(f"tok{i} ")
                if i % 100 == 0:
                    await asyncio.sleep(0)
            return {"chunks": 1000, "query": ctx.query}

    with running(agent):
        task_id = user.client.submit(f"stream {kind}")["task_id"]
        task = user.client.wait(task_id, timeout=WAIT_S)
    assert task["status"] == "completed", task
    assert task["result"] == {"chunks": 1000, "query": f"stream {kind}"}
    chunks = all_output(user, task_id)
    assert [c.seq for c in chunks] == list(range(1, 1001))
    assert [c.text for c in chunks] == [f"tok{i} " for i in range(1000)]
    assert {c.stream for c in chunks} == {"output"}
    # Batched: far fewer requests than chunks.
    assert 1 <= transport.output_calls < 500, transport.output_calls


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_cancel_reaches_the_handler(server: Server, user: User, kind: str) -> None:
    agent = user.agent()
    seen = threading.Event()
    reasons: List[Any] = []

    if kind == "sync":

        @agent.task
        def handle(ctx: TaskContext) -> str:
            try:
                for i in range(100_000):
                    ctx.progress(i % 100)
                    time.sleep(0.05)
            except Canceled as stop:
                reasons.append((stop.reason, ctx.canceled, ctx.cancel_reason))
                seen.set()
                raise
            return "not reached"

    else:

        @agent.task
        async def handle(ctx: TaskContext) -> str:
            try:
                for i in range(100_000):
                    ctx.progress(i % 100)
                    await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                reasons.append(("canceled", ctx.canceled, ctx.cancel_reason))
                seen.set()
                raise
            return "not reached"

    with running(agent):
        task_id = user.client.submit("cancel me")["task_id"]
        wait_until("task running", lambda: user.client.get(task_id)["status"] == "running")
        assert user.client.cancel(task_id)["status"] == "canceled"
        assert seen.wait(WAIT_S), "the handler never saw the cancellation"
    assert reasons == [("canceled", True, "canceled")]
    task = user.client.get(task_id)
    assert task["status"] == "canceled", task
    assert task["result"] is None


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_non_retryable_fails_at_once(server: Server, user: User, kind: str) -> None:
    agent = user.agent()
    calls: List[int] = []

    if kind == "sync":

        @agent.task
        def handle(ctx: TaskContext) -> None:
            calls.append(ctx.attempt)
            raise NonRetryable("the query cannot be parsed")

    else:

        @agent.task
        async def handle(ctx: TaskContext) -> None:
            calls.append(ctx.attempt)
            raise NonRetryable("the query cannot be parsed")

    with running(agent):
        task_id = user.client.submit("bad")["task_id"]
        task = user.client.wait(task_id, timeout=WAIT_S)
        # Had it been retried, a second attempt would come within the backoff (≤ 1 s).
        time.sleep(1.5)
    assert task["status"] == "failed", task
    assert "the query cannot be parsed" in (task["error"] or "")
    assert task["attempts"] == 1, task
    assert calls == [1]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_other_exceptions_are_retried(server: Server, user: User, kind: str) -> None:
    agent = user.agent()
    attempts: List[int] = []

    def flaky(ctx: TaskContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ValueError("flaky upstream")
        return f"ok on attempt {ctx.attempt}"

    if kind == "sync":
        agent.task(flaky)
    else:

        @agent.task
        async def handle(ctx: TaskContext) -> str:
            await asyncio.sleep(0)
            return flaky(ctx)

    with running(agent):
        task_id = user.client.submit("retry me")["task_id"]
        task = user.client.wait(task_id, timeout=WAIT_S)
    assert task["status"] == "completed", task
    assert task["result"] == "ok on attempt 2"
    assert task["attempts"] == 2
    assert attempts == [1, 2]


def test_concurrency_4(server: Server, user: User) -> None:
    agent = user.agent(concurrency=4)
    # Every handler waits until four run at once: with fewer slots the barrier breaks.
    barrier = threading.Barrier(4, timeout=WAIT_S)
    lock = threading.Lock()
    running_now = [0, 0]  # current, peak

    @agent.task
    def handle(ctx: TaskContext) -> str:
        with lock:
            running_now[0] += 1
            running_now[1] = max(running_now[1], running_now[0])
        try:
            barrier.wait()
        finally:
            with lock:
                running_now[0] -= 1
        return ctx.query

    with running(agent):
        ids = [user.client.submit(f"parallel {i}")["task_id"] for i in range(4)]
        tasks = [user.client.wait(i, timeout=WAIT_S) for i in ids]
    assert [t["status"] for t in tasks] == ["completed"] * 4, tasks
    assert [t["result"] for t in tasks] == [f"parallel {i}" for i in range(4)]
    assert [t["attempts"] for t in tasks] == [1] * 4
    assert running_now[1] == 4


def test_async_concurrency_shares_one_loop(server: Server, user: User) -> None:
    agent = user.agent(concurrency=4)
    state = {"now": 0, "peak": 0}

    @agent.task
    async def handle(ctx: TaskContext) -> int:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        try:
            deadline = time.monotonic() + WAIT_S
            while state["peak"] < 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            state["now"] -= 1
        return state["peak"]

    with running(agent):
        ids = [user.client.submit(f"async {i}")["task_id"] for i in range(4)]
        tasks = [user.client.wait(i, timeout=WAIT_S * 2) for i in ids]
    assert [t["status"] for t in tasks] == ["completed"] * 4, tasks
    assert state["peak"] == 4


def test_sigterm_releases_without_using_an_attempt(server: Server, user: User) -> None:
    submitted = user.client.submit("hand me back", max_attempts=1)
    assert submitted["task"]["max_attempts"] == 1
    task_id = submitted["task_id"]
    _, token = user.register_agent()
    env = dict(os.environ, ZEROSTATE_AGENT_TOKEN=token)
    proc = subprocess.Popen(
        [PYTHON, os.path.join(HERE, "agent_process.py"), server.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"started {task_id} attempt 1"), line + proc.stderr.read() if proc.poll() is not None else line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
        rest = proc.stdout.read()
        assert "agent exited" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Back in the queue at once (a lost lease would count as the only attempt: failed).
    task = wait_until("task queued again", lambda: (lambda t: t if t["status"] == "queued" else None)(user.client.get(task_id)))
    assert task["agent_id"] is None or task["status"] == "queued"

    # A second agent gets the same task and may finish it: the first run used nothing.
    agent = user.agent()
    seen: List[int] = []

    @agent.task
    def finish(ctx: TaskContext) -> str:
        seen.append(ctx.attempt)
        return "done after hand-back"

    with running(agent):
        task = user.client.wait(task_id, timeout=WAIT_S)
    assert task["status"] == "completed", task
    assert task["result"] == "done after hand-back"
    assert len(seen) == 1
    outcomes = [a["outcome"] for a in user.client.attempts(task_id)]
    assert outcomes == ["handed_back", "completed"], outcomes


def test_agent_reconnects_after_server_restart(server: Server) -> None:
    user = server.new_user()
    agent = user.agent()

    @agent.task
    def handle(ctx: TaskContext) -> str:
        return ctx.query.upper()

    with running(agent):
        first = user.client.submit("before")["task_id"]
        assert user.client.wait(first, timeout=WAIT_S)["status"] == "completed"
        server.restart()
        second = user.client.submit("after the restart")["task_id"]
        task = user.client.wait(second, timeout=WAIT_S)
    assert task["status"] == "completed", task
    assert task["result"] == "AFTER THE RESTART"
    user.client.close()


def test_streaming_example_runs(server: Server, user: User) -> None:
    _, token = user.register_agent()
    example = os.path.join(HERE, "..", "examples", "streaming_agent.py")
    env = dict(os.environ, ZEROSTATE_SERVER=server.url, ZEROSTATE_AGENT_TOKEN=token, FAKE_MODEL_DELAY_S="0")
    proc = subprocess.Popen([PYTHON, example], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        task_id = user.client.submit("tell me about streaming")["task_id"]
        task = user.client.wait(task_id, timeout=WAIT_S)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert task["status"] == "completed", task
    chunks = all_output(user, task_id)
    tokens = [c.text for c in chunks if c.stream == "output"]
    assert len(tokens) == 40
    assert "".join(tokens) == task["result"]["text"]
    assert [c.text for c in chunks if c.stream == "log"] == ["attempt 1: generating\n"]


def test_a_long_text_is_split_below_the_append_limit(server: Server, user: User) -> None:
    agent = user.agent()
    # 200 KiB in one call, with characters that grow when encoded: the server takes at
    # most 64 KiB per append, so the SDK must split it (and keep it whole).
    text = ("é\"\\" * 1000 + "\n") * 70

    @agent.task
    def handle(ctx: TaskContext) -> int:
        ctx.output(text)
        return len(text)

    with running(agent):
        task_id = user.client.submit("a long text")["task_id"]
        task = user.client.wait(task_id, timeout=WAIT_S)
    assert task["status"] == "completed", task
    chunks = all_output(user, task_id)
    assert len(chunks) > 1
    assert "".join(c.text for c in chunks) == text


def test_a_refused_token_stops_the_agent_with_unauthorized(server: Server) -> None:
    from zerostate import Agent, Unauthorized

    agent = Agent(server.url, "zsa_not_a_token")

    @agent.task
    def handle(ctx: TaskContext) -> None:
        raise AssertionError("no task can reach an agent the server refuses")

    with pytest.raises(Unauthorized):
        agent.run()
