"""The client: submit and manage tasks, follow their output, and receive real-time
events, as a user (session token or ``zs_`` API key).

``stream_output`` reads ``GET /api/v1/tasks/{id}/output/stream`` (Server-Sent Events)
from the start and follows it live; when the connection drops it reconnects with
``Last-Event-ID`` set to the last chunk it yielded, and if it ever sees a gap in ``seq``
it fetches the missing chunks with ``GET …/output?after=``, so every chunk is yielded
once, in order. ``events`` reads the real-time WebSocket and resumes after a drop with
``?since=<cursor of the last message>``, so no message addressed to the user is missed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime
from typing import Any, Dict, Generator, Iterable, Iterator, List, Optional, Union
from urllib.parse import quote

import httpx

from ._common import Backoff, auth_headers, base_url, format_time
from ._errors import ApiError, Unauthorized, ZeroStateError, error_from_response
from .types import Attempt, Chunk, Event, OutputPage, Submitted, Task, TaskPage, TaskResult

log = logging.getLogger("zerostate.client")

#: Statuses after which a task changes no more.
FINISHED = frozenset({"completed", "failed", "canceled"})
#: The real-time client pings this often; the server closes connections silent for 75 s.
PING_EVERY_S = 25.0
#: A stream silent this long (the server sends heartbeats) counts as dropped.
STREAM_READ_TIMEOUT_S = 75.0


class Client:
    """A user's view of the server.

    >>> client = Client("http://localhost:8080", api_key="zs_…")
    >>> task = client.submit("summarise this", capability="llm")["task"]
    >>> for chunk in client.stream_output(task["id"]):
    ...     print(chunk.text, end="")
    """

    def __init__(
        self,
        server: str,
        token: Optional[str] = None,
        *,
        api_key: Optional[str] = None,
        timeout: float = 30.0,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        """``token`` (a session token) or ``api_key`` (``zs_…``; default
        ``ZEROSTATE_API_KEY``) authenticates every call."""
        self.server = base_url(server)
        secret = token or api_key or os.environ.get("ZEROSTATE_API_KEY")
        if not secret:
            raise ValueError("a token or an API key is required (or ZEROSTATE_API_KEY)")
        self._secret = secret
        self._http = httpx.Client(
            base_url=self.server,
            headers=auth_headers(secret),
            timeout=httpx.Timeout(timeout),
            transport=transport,
        )

    def __repr__(self) -> str:  # the secret stays out of logs and tracebacks
        return f"Client(server={self.server!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Optional[Dict[str, Any]] = None,
        params: Optional[Dict[str, Any]] = None,
    ) -> Any:
        if params is not None:
            params = {k: v for k, v in params.items() if v is not None}
        response = self._http.request(method, path, json=body, params=params)
        if not response.is_success:
            raise error_from_response(response)
        if not response.content:
            return None
        return response.json()

    # -- tasks -------------------------------------------------------------------------

    def submit(
        self,
        query: str,
        *,
        capability: Optional[str] = None,
        agent_id: Optional[str] = None,
        priority: Optional[str] = None,
        timeout_s: Optional[int] = None,
        max_attempts: Optional[int] = None,
        idempotency_key: Optional[str] = None,
        run_at: Union[datetime, str, None] = None,
    ) -> Submitted:
        """Submits a task; options left out take the server's defaults. With an
        ``idempotency_key`` already used (24 h), the first task comes back with
        ``duplicate: True``."""
        body: Dict[str, Any] = {"query": query}
        options = {
            "capability": capability,
            "agent_id": agent_id,
            "priority": priority,
            "timeout_s": timeout_s,
            "max_attempts": max_attempts,
            "idempotency_key": idempotency_key,
            "run_at": format_time(run_at) if isinstance(run_at, datetime) else run_at,
        }
        body.update({k: v for k, v in options.items() if v is not None})
        answer: Submitted = self._call("POST", "/api/v1/tasks/submit", body=body)
        return answer

    def get(self, task_id: str) -> Task:
        task: Task = self._call("GET", f"/api/v1/tasks/{_seg(task_id)}")
        return task

    def list(
        self,
        *,
        status: Optional[str] = None,
        q: Optional[str] = None,
        capability: Optional[str] = None,
        agent_id: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
        all: bool = False,
    ) -> TaskPage:
        """One page of tasks, newest first; pass ``next_cursor`` back for the next."""
        params = {
            "status": status,
            "q": q,
            "capability": capability,
            "agent_id": agent_id,
            "limit": limit,
            "cursor": cursor,
            "all": "true" if all else None,
        }
        page: TaskPage = self._call("GET", "/api/v1/tasks", params=params)
        return page

    def iter_tasks(self, **filters: Any) -> Iterator[Task]:
        """Every task matching the filters of ``list``, page after page."""
        cursor = filters.pop("cursor", None)
        while True:
            page = self.list(cursor=cursor, **filters)
            yield from page["tasks"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def status(self, task_id: str) -> Dict[str, Any]:
        """``{task_id, status, progress, agent_id, updated_at, queue_position, waiting_for}``."""
        answer: Dict[str, Any] = self._call("GET", f"/api/v1/tasks/{_seg(task_id)}/status")
        return answer

    def result(self, task_id: str) -> TaskResult:
        """The outcome of a finished task (``Conflict`` ``not_finished`` before)."""
        answer: TaskResult = self._call("GET", f"/api/v1/tasks/{_seg(task_id)}/result")
        return answer

    def attempts(self, task_id: str) -> List[Attempt]:
        """The task's attempts, oldest first."""
        answer = self._call("GET", f"/api/v1/tasks/{_seg(task_id)}/attempts")
        attempts: List[Attempt] = answer["attempts"]
        return attempts

    def cancel(self, task_id: str) -> Dict[str, Any]:
        """Cancels a queued or running task (``Conflict`` when already finished)."""
        answer: Dict[str, Any] = self._call("POST", f"/api/v1/tasks/{_seg(task_id)}/cancel")
        return answer

    def retry(self, task_id: str) -> Submitted:
        """Submits a finished task again as a new task (same query, capability, priority
        and agent)."""
        answer: Submitted = self._call("POST", f"/api/v1/tasks/{_seg(task_id)}/retry")
        return answer

    def wait(self, task_id: str, timeout: Optional[float] = None, poll_s: float = 0.5) -> Task:
        """Polls until the task is finished; raises ``TimeoutError`` after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            task = self.get(task_id)
            if task["status"] in FINISHED:
                return task
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} still {task['status']} after {timeout} s")
            time.sleep(poll_s)

    # -- output ------------------------------------------------------------------------

    def output(self, task_id: str, after: int = 0, limit: Optional[int] = None) -> OutputPage:
        """The chunks with ``seq > after`` stored so far (one page)."""
        answer = self._call(
            "GET",
            f"/api/v1/tasks/{_seg(task_id)}/output",
            params={"after": after, "limit": limit},
        )
        return OutputPage(
            chunks=[Chunk.from_json(c) for c in answer.get("chunks", [])],
            next=int(answer.get("next", after)),
            complete=bool(answer.get("complete", False)),
        )

    def stream_output(self, task_id: str, after: int = 0) -> "OutputStream":
        """Iterates over the task's output chunks from ``seq > after`` on, following
        live until the task finishes (then ``.status`` holds its final status)."""
        return OutputStream(self, task_id, after)

    # -- real-time ---------------------------------------------------------------------

    def events(self, since: Optional[str] = None) -> "EventStream":
        """Iterates over real-time messages (``task_update``, ``task_output``,
        ``agent_update``, ``system``, ``resumed``, ``reset``, …), reconnecting and
        resuming from the last cursor after a drop. ``since`` resumes from an earlier
        cursor (``stream.cursor`` of a previous stream)."""
        return EventStream(self, since)


def _seg(raw: str) -> str:
    """A path segment: ids are UUIDs, but nothing a caller passes may change the path."""
    return quote(str(raw), safe="")


class OutputStream(Iterator[Chunk]):
    """Chunks of one task's output, in order, each once; see ``Client.stream_output``."""

    def __init__(self, client: Client, task_id: str, after: int = 0) -> None:
        self.task_id = task_id
        #: The seq of the last chunk yielded.
        self.last = after
        #: The task's final status once the stream ended; None while it runs.
        self.status: Optional[str] = None
        #: How many times the stream had to reconnect.
        self.reconnects = 0
        self._client = client
        self._gen = self._run()

    def __iter__(self) -> "OutputStream":
        return self

    def __next__(self) -> Chunk:
        return next(self._gen)

    def close(self) -> None:
        """Stops following (closes the connection)."""
        self._gen.close()

    def _run(self) -> Generator[Chunk, None, None]:
        http = self._client._http
        path = f"/api/v1/tasks/{_seg(self.task_id)}/output/stream"
        backoff = Backoff()
        while True:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if self.last > 0:
                headers["Last-Event-ID"] = str(self.last)
            pause: Optional[float] = None
            try:
                with http.stream(
                    "GET",
                    path,
                    headers=headers,
                    timeout=httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT_S),
                ) as response:
                    if response.status_code != 200:
                        response.read()
                        err = error_from_response(response)
                        if 400 <= err.status < 500 and err.status != 429:
                            raise err
                        pause = err.retry_after
                    else:
                        for event, data in _sse_events(response.iter_lines()):
                            backoff.reset()
                            if event == "output":
                                chunk = Chunk.from_json(data)
                                if chunk.seq > self.last + 1:
                                    # A gap (chunks this stream skipped): fetch them.
                                    yield from self._fill(until=chunk.seq - 1)
                                if chunk.seq == self.last + 1:
                                    self.last = chunk.seq
                                    yield chunk
                            elif event == "end":
                                # Whatever the stream did not carry is in the store.
                                yield from self._fill(until=None)
                                self.status = str(data.get("status")) if data.get("status") else None
                                return
            except httpx.HTTPError as err:
                log.info("output stream of %s dropped (%s); resuming after %d", self.task_id, err, self.last)
            self.reconnects += 1
            delay = backoff.next()
            time.sleep(max(delay, pause or 0.0))

    def _fill(self, until: Optional[int]) -> Iterator[Chunk]:
        """Yields stored chunks after ``last`` up to ``until`` (None: all there are)."""
        while until is None or self.last < until:
            page = self._client.output(self.task_id, after=self.last)
            fresh = [c for c in page.chunks if c.seq > self.last]
            for chunk in fresh:
                if until is not None and chunk.seq > until:
                    return
                if chunk.seq != self.last + 1:
                    raise ZeroStateError(
                        f"output of {self.task_id} skips from seq {self.last} to {chunk.seq}"
                    )
                self.last = chunk.seq
                yield chunk
            if not fresh:
                return


def _sse_events(lines: Iterable[str]) -> Iterator["tuple[str, Dict[str, Any]]"]:
    """Parses Server-Sent Events into ``(event, data)``; comments (heartbeats) and
    events without JSON data are skipped."""
    event: str = "message"
    data: List[str] = []
    for line in lines:
        line = line.rstrip("\r")
        if not line:
            if data:
                try:
                    parsed = json.loads("\n".join(data))
                except ValueError:
                    parsed = None
                if isinstance(parsed, dict):
                    yield event, parsed
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)


class EventStream(Iterator[Event]):
    """Real-time messages for the user, across reconnects; see ``Client.events``.

    The first connection is opened by the constructor (which raises ``Unauthorized``
    at once for bad credentials), so nothing sent after ``events()`` returns is missed.
    """

    def __init__(self, client: Client, since: Optional[str] = None) -> None:
        #: The cursor of the last message yielded: pass it as ``since`` to resume later.
        self.cursor = since
        #: How many times the stream had to reconnect.
        self.reconnects = 0
        self._client = client
        self._socket: Any = None
        self._opened: Optional["tuple[Any, Optional[str]]"] = self._open()
        self._gen = self._run()

    def __iter__(self) -> "EventStream":
        return self

    def __next__(self) -> Event:
        return next(self._gen)

    def close(self) -> None:
        """Closes the connection; the iteration ends."""
        self._gen.close()
        if self._opened is not None:
            self._opened[0].close()
            self._opened = None

    def drop(self) -> None:
        """Closes the current connection without ending the iteration: the stream
        reconnects and resumes (what a network drop would do)."""
        socket = self._socket or (self._opened[0] if self._opened else None)
        if socket is not None:
            socket.close()

    def _url(self) -> str:
        url = self._client.server.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        url += "/api/v1/ws/connect"
        if self.cursor:
            url += f"?since={quote(self.cursor, safe='')}"
        return url

    def _open(self) -> "tuple[Any, Optional[str]]":
        """Connects (resuming after ``cursor``) and reads the ``welcome``; returns the
        socket and the welcome's cursor."""
        from websockets.exceptions import InvalidHandshake
        from websockets.sync.client import connect

        try:
            # Entered by hand: the connection outlives this call (it is closed by
            # `_run` or `close`); `__enter__` is what opens it on every websockets
            # version this SDK supports.
            socket = connect(
                self._url(),
                additional_headers=auth_headers(self._client._secret),
                open_timeout=10,
                close_timeout=5,
            ).__enter__()
        except InvalidHandshake as err:
            status = _handshake_status(err)
            if status == 401:
                raise Unauthorized(401, "unauthorized", "the server refused the credentials") from None
            raise ApiError(status or 0, "websocket_refused", str(err)) from None
        try:
            welcome = json.loads(socket.recv(timeout=10))
        except BaseException:
            socket.close()
            raise
        cursor = (welcome.get("data") or {}).get("cursor") if welcome.get("type") == "welcome" else None
        if self.cursor is None and cursor:
            self.cursor = str(cursor)
        return socket, (str(cursor) if cursor else None)

    def _run(self) -> Generator[Event, None, None]:
        from websockets.exceptions import ConnectionClosed

        backoff = Backoff()
        while True:
            delay: Optional[float] = None
            try:
                if self._opened is None:
                    self._opened = self._open()
                socket, welcome = self._opened
                self._opened = None
                self._socket = socket
                with socket:
                    last_sent = time.monotonic()
                    while True:
                        wait = PING_EVERY_S - (time.monotonic() - last_sent)
                        try:
                            raw = socket.recv(timeout=max(0.05, wait))
                        except TimeoutError:
                            socket.send(json.dumps({"type": "ping"}))
                            last_sent = time.monotonic()
                            continue
                        message = json.loads(raw)
                        kind = str(message.get("type", ""))
                        data = message.get("data") or {}
                        backoff.reset()
                        if kind in ("pong", "welcome"):
                            continue
                        if kind == "reset" and welcome:
                            # The gap cannot be replayed; go on from where this
                            # connection started rather than asking for it again.
                            self.cursor = welcome
                        if message.get("cursor"):
                            self.cursor = str(message["cursor"])
                        yield Event(
                            type=kind,
                            data=data if isinstance(data, dict) else {"value": data},
                            cursor=message.get("cursor"),
                            timestamp=message.get("timestamp"),
                        )
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else None
                if code == 4001:
                    raise Unauthorized(401, "unauthorized", "the server closed the connection: credentials no longer valid") from None
                if code == 4008:
                    delay = 0.0  # too slow: resume at once
            except ApiError as err:
                if err.status == 401 or (400 <= err.status < 500 and err.status != 429):
                    raise
                log.info("real-time connection refused (%s); retrying", err)
            except (OSError, TimeoutError, EOFError) as err:
                log.info("real-time connection failed (%s); retrying", err)
            finally:
                self._socket = None
            self.reconnects += 1
            time.sleep(backoff.next() if delay is None else delay)


def _handshake_status(err: Exception) -> Optional[int]:
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None) or getattr(err, "status_code", None)
    return int(status) if status is not None else None
