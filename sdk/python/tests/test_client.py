"""The client against the real server: following output across a dropped connection,
real-time events with resume, and the v2 submit options."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, List, Optional

import pytest

from conftest import WAIT_S, Server, User, running, wait_until
from zerostate import Client, Conflict, TaskContext


class CuttingProxy:
    """A TCP proxy to the server that cuts the first connection once it has carried
    ``cut_after`` bytes to the client: a network drop in the middle of a stream."""

    def __init__(self, upstream_port: int, cut_after: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.cuts = 0
        self.connections = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            cut = self.cuts == 0 and self.connections == 1
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, self.cut_after if cut else None), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, cut_after: Optional[int]) -> None:
        carried = 0
        try:
            while True:
                data = src.recv(4096)
                if not data:
                    break
                dst.sendall(data)
                carried += len(data)
                if cut_after is not None and carried >= cut_after:
                    self.cuts += 1
                    break
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_stream_output_sees_every_chunk_in_order_across_a_drop(server: Server, user: User) -> None:
    agent = user.agent()

    @agent.task
    def handle(ctx: TaskContext) -> int:
        for i in range(1000):
            ctx.output(f"tok{i} ")
            if i % 50 == 49:
                time.sleep(0.02)  # so the reader follows a live stream, not a finished one
        return 1000

    proxy = CuttingProxy(server.port, cut_after=20_000)
    follower = Client(f"http://127.0.0.1:{proxy.port}", api_key=user.api_key)
    try:
        with running(agent):
            task_id = user.client.submit("stream through a bad network")["task_id"]
            stream = follower.stream_output(task_id)
            chunks = list(stream)
    finally:
        follower.close()
        proxy.close()
    assert proxy.cuts == 1, "the proxy never cut the stream"
    assert stream.reconnects >= 1
    assert [c.seq for c in chunks] == list(range(1, 1001))
    assert [c.text for c in chunks] == [f"tok{i} " for i in range(1000)]
    assert stream.status == "completed"


def test_stream_output_of_a_finished_task_replays_then_ends(server: Server, user: User) -> None:
    agent = user.agent()

    @agent.task
    def handle(ctx: TaskContext) -> None:
        ctx.log("starting\n")
        ctx.output("a")
        ctx.output("b")

    with running(agent):
        task_id = user.client.submit("short")["task_id"]
        user.client.wait(task_id, timeout=WAIT_S)
    stream = user.client.stream_output(task_id)
    chunks = list(stream)
    assert [(c.seq, c.stream, c.text) for c in chunks] == [(1, "log", "starting\n"), (2, "output", "a"), (3, "output", "b")]
    assert stream.status == "completed"
    # From a position on: only what came after it.
    assert [c.seq for c in user.client.stream_output(task_id, after=2)] == [3]


def test_events_resume_after_a_drop(server: Server, user: User) -> None:
    events = user.client.events()
    try:
        first = user.client.submit("first, while connected")["task_id"]
        seen = next(e for e in events if e.type == "task_update" and e.data.get("task_id") == first)
        assert seen.cursor
        cursor = events.cursor
        events.drop()
        # Sent while the connection is down: delivered on the resume.
        second = user.client.submit("second, while disconnected")["task_id"]
        kinds: List[Any] = []
        got_second = False
        for event in events:
            kinds.append(event.type)
            got_second = got_second or (event.type == "task_update" and event.data.get("task_id") == second)
            if got_second and "resumed" in kinds:
                break
        assert events.reconnects == 1
        assert events.cursor != cursor
        assert "resumed" in kinds
    finally:
        events.close()
    # A new stream from a saved cursor gets what came after it.
    third = user.client.submit("third")["task_id"]
    later = user.client.events(since=cursor)
    try:
        ids = []
        for event in later:
            if event.type == "task_update":
                ids.append(event.data["task_id"])
            if third in ids:
                break
        assert ids[0] == second and ids[-1] == third, ids
    finally:
        later.close()


def test_submit_options_get_list_cancel_retry(server: Server, user: User) -> None:
    client = user.client
    key = f"order-{uuid.uuid4().hex}"
    run_at = datetime.now(timezone.utc) + timedelta(hours=1)
    answer = client.submit(
        "with every option",
        capability="general",
        priority="high",
        timeout_s=120,
        max_attempts=5,
        idempotency_key=key,
        run_at=run_at,
    )
    task = answer["task"]
    assert answer["status"] == "queued"
    assert (task["capability"], task["priority"], task["max_attempts"]) == ("general", "high", 5)
    assert task["idempotency_key"] == key
    assert task["run_at"] is not None
    again = client.submit("with every option", idempotency_key=key)
    assert again.get("duplicate") is True
    assert again["task"]["id"] == task["id"]

    assert client.get(task["id"])["query"] == "with every option"
    listed = [t["id"] for t in client.list(status="queued", limit=200)["tasks"]]
    assert task["id"] in listed
    assert client.status(task["id"])["waiting_for"] == "run_at"

    assert client.cancel(task["id"])["status"] == "canceled"
    with pytest.raises(Conflict):
        client.cancel(task["id"])
    retried = client.retry(task["id"])
    assert retried["task"]["id"] != task["id"]
    assert retried["task"]["query"] == "with every option"
    assert retried["task"]["status"] == "queued"


def test_events_carry_live_task_output(server: Server, user: User) -> None:
    agent = user.agent()
    go = threading.Event()

    @agent.task
    def handle(ctx: TaskContext) -> str:
        go.wait(WAIT_S)
        for word in ("live", " output", " frames"):
            ctx.output(word)
        return "ok"

    events = user.client.events()
    try:
        with running(agent):
            task_id = user.client.submit("frames")["task_id"]
            wait_until("task running", lambda: user.client.get(task_id)["status"] == "running")
            go.set()
            frames: List[Any] = []
            for event in events:
                if event.type == "task_output" and event.data.get("task_id") == task_id:
                    assert event.cursor is None  # kept out of the resume history
                    frames.append((event.data["seq"], event.data["text"]))
                if len(frames) == 3:
                    break
            user.client.wait(task_id, timeout=WAIT_S)
    finally:
        events.close()
    assert frames == [(1, "live"), (2, " output"), (3, " frames")]


def test_bad_credentials_raise_unauthorized(server: Server) -> None:
    from zerostate import NotFound, Unauthorized

    client = Client(server.url, api_key="zs_not_a_key")
    try:
        with pytest.raises(Unauthorized) as refused:
            client.list()
        assert refused.value.status == 401 and refused.value.code
        with pytest.raises(Unauthorized):
            client.events()
    finally:
        client.close()
    good = server.new_user().client
    with pytest.raises(NotFound):
        good.get(str(uuid.uuid4()))
    good.close()
