"""Agents: a decorated function that handles tasks, and the loop that feeds it.

The loop long-polls ``POST /api/v1/runtime/claim`` for as many tasks as it has free
slots, runs the handler for each (``async def`` handlers on the event loop, plain ones in
a thread of their own), and reports the outcome with ``complete`` or ``fail``.

Per running task one *sender* coroutine owns every call to the server about that task,
so they reach it in the order the handler made them: the output chunks buffered since the
last call go out together in one ``output`` request (``{"chunks": [...]}``), then the
latest progress; when the handler is quiet the sender renews the lease with a progress
report. A 409 ``canceled`` (or a 404: the task is no longer ours) from any of them stops
the handler: ``ctx.canceled`` turns true, an ``async`` handler is cancelled at its next
``await``, and the handler's next ``output``/``log``/``progress`` raises ``Canceled``.

On SIGTERM (or ``Agent.stop()``) the agent claims nothing more, stops its handlers,
sends the output they had written, and hands each unfinished task back with
``…/release``, which does not use up an attempt. Network trouble and server restarts are
retried with capped exponential backoff; a 401 (token revoked, agent deleted) stops the
agent with ``Unauthorized``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import signal
import threading
import time
import traceback
from collections import deque
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Tuple, TypeVar, Union

import httpx

from ._common import Backoff, auth_headers, base_url, parse_time
from ._errors import (
    ApiError,
    Canceled,
    NonRetryable,
    OutputLimitExceeded,
    Unauthorized,
    error_from_response,
    is_missing_route,
)

log = logging.getLogger("zerostate.agent")

#: How long one claim waits on the server for a task (the contract allows up to 30 s).
CLAIM_WAIT_S = 25.0
#: A text longer than this many characters is sent as several chunks, so no request can
#: pass the server's 64 KiB limit on one append whatever the characters.
PIECE_CHARS = 8000
#: The JSON size of the chunks one ``output`` request carries at most.
BATCH_BYTES = 60_000
#: Buffered output beyond which the sender goes at once rather than lingering.
FLUSH_AT_BYTES = 32_000
#: Output a sync handler may have buffered before ``output`` waits for the server.
MAX_BUFFER_BYTES = 1 << 20
#: The hard bound for handlers on the event loop, which cannot be made to wait: past
#: it, ``output`` raises ``OutputLimitExceeded`` (the server's own limit is 16 MiB).
HARD_BUFFER_BYTES = 16 << 20
#: Lease renewals happen every third of the lease, within these bounds.
MIN_RENEW_S = 0.2
MAX_RENEW_S = 10.0
#: How long a finished task's report (and its last output) is retried while the server
#: is unreachable; after that the lease has expired and the task is someone else's.
REPORT_FOR_S = 120.0
#: On shutdown: how long the last output and the ``release`` call may take per task.
RELEASE_FOR_S = 10.0

Handler = Callable[["TaskContext"], Any]
H = TypeVar("H", bound=Handler)


class TaskContext:
    """What a task handler gets: the task, and the ways to report on it.

    ``output``, ``log`` and ``progress`` never wait for the network: they queue, and the
    agent sends the queue in batches. They are safe to call from any thread.
    """

    def __init__(self, claimed: Dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        #: The task's id.
        self.id: str = str(claimed["id"])
        #: The task's query, as submitted.
        self.query: str = str(claimed.get("query", ""))
        #: The capability the task asked for.
        self.capability: str = str(claimed.get("capability", "general"))
        #: Which attempt this is (1 for the first).
        self.attempt: int = int(claimed.get("attempt") or 1)
        #: When the lease runs out unless renewed (RFC 3339), as the claim said.
        self.lease_expires_at: Optional[str] = claimed.get("lease_expires_at")
        #: Set once the task is no longer this handler's (see ``cancel_reason``); a sync
        #: handler may ``ctx.cancel_event.wait(timeout)`` instead of sleeping.
        self.cancel_event = threading.Event()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._chunks: Deque[Tuple[str, str, int]] = deque()
        self._buffered = 0
        self._progress: Optional[Tuple[float, Optional[str]]] = None
        self._last_progress: float = 0
        self._reason: Optional[str] = None
        self._output_error: Optional[OutputLimitExceeded] = None
        self._on_stop: Optional[Callable[[], Any]] = None
        self._wake = asyncio.Event()

    # -- what handlers call ------------------------------------------------------------

    @property
    def canceled(self) -> bool:
        """True once the user canceled the task, its lease was lost, or the agent is
        stopping and handed it back."""
        return self.cancel_event.is_set()

    @property
    def cancel_reason(self) -> Optional[str]:
        """``"canceled"``, ``"lost"`` or ``"shutdown"`` once ``canceled``; else None."""
        return self._reason

    def raise_if_canceled(self) -> None:
        """Raises ``Canceled`` once the task is no longer this handler's."""
        if self._reason is not None:
            raise Canceled(self._reason)

    def output(self, text: str) -> None:
        """Appends ``text`` to the task's output (e.g. an LLM token). Raises ``Canceled``
        once the task is no longer this handler's."""
        self._append("output", text)

    def log(self, text: str) -> None:
        """Appends ``text`` to the task's log stream (shown apart from the output)."""
        self._append("log", text)

    def progress(self, n: Union[int, float], message: Optional[str] = None) -> None:
        """Reports progress from 0 to 100 (sent after the output written before it)."""
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not 0 <= n <= 100:
            raise ValueError(f"progress must be a number from 0 to 100, got {n!r}")
        self.raise_if_canceled()
        with self._lock:
            self._progress = (n, message)
            self._last_progress = n
        self._notify()

    # -- the agent's side --------------------------------------------------------------

    def _append(self, stream: str, text: str, internal: bool = False) -> None:
        if not isinstance(text, str):
            raise TypeError(f"output text must be str, got {type(text).__name__}")
        if not internal:
            self.raise_if_canceled()
            if self._output_error is not None:
                raise self._output_error
        if not text:
            return
        pieces = [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)]
        on_loop = threading.get_ident() == self._loop_thread
        with self._lock:
            if not on_loop and not internal:
                # Backpressure for handler threads: wait for the sender rather than
                # buffer without bound while the server is slow or away.
                while (
                    self._buffered >= MAX_BUFFER_BYTES
                    and self._reason is None
                    and self._output_error is None
                ):
                    self._space.wait(timeout=1.0)
                if self._reason is not None:
                    raise Canceled(self._reason)
            if self._buffered >= HARD_BUFFER_BYTES and not internal:
                raise OutputLimitExceeded(
                    "output is written faster than the server accepts it "
                    f"({self._buffered} bytes waiting)"
                )
            was_empty = not self._chunks
            for piece in pieces:
                size = len(json.dumps(piece, ensure_ascii=False).encode("utf-8")) + 32
                self._chunks.append((stream, piece, size))
                self._buffered += size
            urgent = was_empty or self._buffered >= FLUSH_AT_BYTES
        if urgent:
            self._notify()

    def _notify(self) -> None:
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
            return
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:
            pass  # the loop is closed: the agent is gone, nothing will be sent anyway

    def _has_output(self) -> bool:
        with self._lock:
            return bool(self._chunks)

    def _batch_ready(self) -> bool:
        with self._lock:
            return self._buffered >= FLUSH_AT_BYTES

    def _take_batch(self) -> List[Dict[str, str]]:
        batch: List[Dict[str, str]] = []
        total = 0
        with self._lock:
            while self._chunks:
                stream, text, size = self._chunks[0]
                if batch and total + size > BATCH_BYTES:
                    break
                self._chunks.popleft()
                self._buffered -= size
                total += size
                batch.append({"stream": stream, "text": text})
            self._space.notify_all()
        return batch

    def _drop_output(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._buffered = 0
            self._space.notify_all()

    def _take_progress(self) -> Optional[Tuple[float, Optional[str]]]:
        with self._lock:
            return self._progress

    def _progress_sent(self, sent: Tuple[float, Optional[str]]) -> None:
        with self._lock:
            if self._progress == sent:
                self._progress = None

    def _stop(self, reason: str) -> None:
        """Marks the task as no longer the handler's (called on the event loop)."""
        if self._reason is not None:
            return
        self._reason = reason
        self.cancel_event.set()
        with self._lock:
            self._space.notify_all()
        if self._on_stop is not None:
            self._on_stop()
        self._wake.set()


class _Run:
    """One task in the agent's hands."""

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        #: The handler returned: the sender drains and the report is being sent.
        self.finishing = False
        self.finish_deadline = 0.0
        #: A batch taken from the buffer but not yet accepted by the server.
        self.pending: Optional[List[Dict[str, str]]] = None
        self.main: Optional["asyncio.Task[None]"] = None
        self.sender: Optional["asyncio.Task[None]"] = None


_STOPPED = ("stopped",)


class Agent:
    """A process that takes tasks from a ZeroState server and runs a handler for each.

    >>> agent = Agent("http://localhost:8080", token="zsa_…")
    >>> @agent.task
    ... def handle(ctx):
    ...     ctx.output("hello ")
    ...     return "done"
    >>> agent.run()  # until SIGTERM / Ctrl-C
    """

    def __init__(
        self,
        server: str,
        token: Optional[str] = None,
        *,
        concurrency: int = 1,
        claim_wait_s: float = CLAIM_WAIT_S,
        flush_interval: float = 0.05,
        shutdown_grace: float = 10.0,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        """``token`` is the agent's ``zsa_…`` token (default: ``ZEROSTATE_AGENT_TOKEN``).
        ``concurrency`` tasks run at once. Output is sent at most ``flush_interval``
        seconds after it is written. On shutdown, handlers get ``shutdown_grace`` seconds
        to return after their tasks were handed back. ``transport`` replaces httpx's
        (proxies, tests)."""
        self.server = base_url(server)
        token = token or os.environ.get("ZEROSTATE_AGENT_TOKEN")
        if not token:
            raise ValueError("an agent token is required (argument or ZEROSTATE_AGENT_TOKEN)")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 0 <= claim_wait_s <= 30:
            raise ValueError("claim_wait_s must be between 0 and 30")
        self._token = token
        self.concurrency = concurrency
        self.claim_wait_s = claim_wait_s
        self.flush_interval = flush_interval
        self.shutdown_grace = shutdown_grace
        self._transport = transport
        self._handler: Optional[Handler] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop_event: Optional[asyncio.Event] = None
        self._stop_requested = threading.Event()
        self._fatal: Optional[BaseException] = None
        self._runs: Dict[str, _Run] = {}
        self._slot_freed: Optional[asyncio.Event] = None
        self._http: Optional[httpx.AsyncClient] = None
        self._warned_no_output = False

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        return f"Agent(server={self.server!r}, concurrency={self.concurrency})"

    def task(self, fn: H) -> H:
        """Decorator: ``fn(ctx)`` handles every task; sync or ``async def``. Its return
        value (anything JSON-serializable) is the result; an exception fails the attempt
        (``NonRetryable``: the whole task)."""
        if self._handler is not None:
            raise RuntimeError("this agent already has a task handler")
        if not callable(fn):
            raise TypeError("the task handler must be callable")
        self._handler = fn
        return fn

    # -- running -----------------------------------------------------------------------

    def run(self) -> None:
        """Runs until SIGTERM or SIGINT (when called from the main thread) or ``stop()``;
        raises ``Unauthorized`` if the server refuses the token."""
        asyncio.run(self.serve(handle_signals=threading.current_thread() is threading.main_thread()))

    def stop(self) -> None:
        """Asks a running agent to stop, from any thread: it hands running tasks back."""
        self._stop_requested.set()
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass  # already stopped

    async def serve(self, *, handle_signals: bool = False) -> None:
        """The agent as a coroutine, for programs that own their event loop."""
        if self._handler is None:
            raise RuntimeError("no task handler: decorate a function with @agent.task")
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._fatal = None
        if self._stop_requested.is_set():
            self._stop_event.set()
        installed: List[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    self._loop.add_signal_handler(sig, self._on_signal, sig)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
        limits = httpx.Limits(max_connections=self.concurrency * 2 + 4)
        try:
            async with httpx.AsyncClient(
                base_url=self.server,
                headers=auth_headers(self._token),
                timeout=httpx.Timeout(10.0),
                limits=limits,
                transport=self._transport,
            ) as http:
                self._http = http
                log.info("agent started (server %s, concurrency %d)", self.server, self.concurrency)
                try:
                    await self._claim_loop()
                finally:
                    await self._shutdown()
        finally:
            for sig in installed:
                self._loop.remove_signal_handler(sig)
            self._http = None
        if self._fatal is not None:
            raise self._fatal
        log.info("agent stopped")

    def _on_signal(self, sig: int) -> None:
        log.info("received %s: handing running tasks back", signal.Signals(sig).name)
        assert self._stop_event is not None
        self._stop_event.set()

    def _fail_agent(self, error: BaseException) -> None:
        if self._fatal is None:
            self._fatal = error
        assert self._stop_event is not None
        self._stop_event.set()

    async def _claim_loop(self) -> None:
        assert self._stop_event is not None and self._slot_freed is not None
        stopping = self._stop_event
        backoff = Backoff()
        while not stopping.is_set():
            free = self.concurrency - len(self._runs)
            if free <= 0:
                self._slot_freed.clear()
                await _first(self._slot_freed.wait(), stopping.wait())
                continue
            claim = asyncio.ensure_future(self._claim(free))
            stop = asyncio.ensure_future(stopping.wait())
            await asyncio.wait({claim, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not claim.done():
                claim.cancel()
                break
            try:
                claimed = claim.result()
            except Unauthorized as err:
                log.error("the server refused the agent token (revoked, or the agent was deleted)")
                self._fail_agent(err)
                break
            except (httpx.HTTPError, ApiError) as err:
                pause = backoff.next()
                if isinstance(err, ApiError) and err.retry_after:
                    pause = max(pause, err.retry_after)
                log.warning("claim failed (%s); retrying in %.1f s", _describe(err), pause)
                await _first(asyncio.sleep(pause), stopping.wait())
                continue
            backoff.reset()
            for raw in claimed:
                self._start(raw)

    async def _claim(self, free: int) -> List[Dict[str, Any]]:
        assert self._http is not None
        body: Dict[str, Any] = {"wait_s": self.claim_wait_s}
        if self.concurrency > 1:
            body["max_tasks"] = min(free, 32)
        response = await self._http.post(
            "/api/v1/runtime/claim",
            json=body,
            timeout=httpx.Timeout(10.0, read=self.claim_wait_s + 15.0),
        )
        if response.status_code == 204:
            return []
        if response.status_code != 200:
            raise error_from_response(response)
        answer = response.json()
        if "tasks" in answer:
            return list(answer["tasks"])
        return [answer["task"]]

    def _start(self, raw: Dict[str, Any]) -> None:
        assert self._loop is not None
        run = _Run(TaskContext(raw, self._loop))
        self._runs[run.ctx.id] = run
        log.info("running task %s (attempt %d)", run.ctx.id, run.ctx.attempt)
        run.main = asyncio.ensure_future(self._run_task(run))

    async def _run_task(self, run: _Run) -> None:
        ctx = run.ctx
        run.sender = asyncio.ensure_future(self._send_loop(run))
        try:
            outcome = await self._execute(run)
            if ctx._reason is None and outcome is not _STOPPED:
                run.finishing = True
                run.finish_deadline = time.monotonic() + REPORT_FOR_S
                if outcome[0] == "failed" and outcome[3]:
                    ctx._append("log", outcome[3], internal=True)
                ctx._wake.set()
                await run.sender
                if ctx._reason is None:
                    await self._report(run, outcome)
        except Exception:  # a bug here must not take the agent down with it
            log.exception("task %s: unexpected error in the agent", ctx.id)
        finally:
            if run.sender is not None and not run.sender.done() and ctx._reason != "shutdown":
                run.sender.cancel()
            self._runs.pop(ctx.id, None)
            assert self._slot_freed is not None
            self._slot_freed.set()

    async def _execute(self, run: _Run) -> Tuple[Any, ...]:
        """Runs the handler; ``("completed", result)``, ``("failed", error, retryable,
        traceback)`` or ``_STOPPED``."""
        ctx = run.ctx
        assert self._handler is not None and self._loop is not None
        handler = self._handler
        try:
            if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
                getattr(handler, "__call__", None)
            ):
                work = asyncio.ensure_future(handler(ctx))
                ctx._on_stop = work.cancel
                try:
                    value = await work
                except asyncio.CancelledError:
                    if ctx._reason is not None:
                        return _STOPPED
                    raise
            else:
                value = await self._in_thread(handler, ctx)
                if inspect.isawaitable(value):  # a sync callable that returned a coroutine
                    value = await value
        except Canceled:
            if ctx._reason is not None:
                return _STOPPED
            return ("failed", "Canceled raised without a cancellation", True, None)
        except Exception as err:
            if ctx._reason is not None:
                return _STOPPED
            retryable = not isinstance(err, NonRetryable)
            message = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            log.info("task %s failed (%s): %s", ctx.id, "retryable" if retryable else "final", message)
            return ("failed", message, retryable, trace)
        if ctx._reason is not None:
            return _STOPPED
        try:
            json.dumps(value)
        except (TypeError, ValueError) as err:
            return ("failed", f"the result is not JSON-serializable: {err}", False, None)
        return ("completed", value)

    async def _in_thread(self, handler: Handler, ctx: TaskContext) -> Any:
        """Runs a sync handler in a daemon thread of its own: a handler that ignores its
        cancellation cannot keep the process from exiting."""
        assert self._loop is not None
        loop = self._loop
        done: "asyncio.Future[Any]" = loop.create_future()

        def settle(value: Any, error: Optional[BaseException]) -> None:
            if done.cancelled():
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(value)

        def target() -> None:
            try:
                value = handler(ctx)
            except BaseException as err:  # noqa: BLE001 - handed to the loop as is
                _call_soon(loop, settle, None, err)
            else:
                _call_soon(loop, settle, value, None)

        threading.Thread(target=target, name=f"zerostate-task-{ctx.id[:8]}", daemon=True).start()
        return await done

    # -- talking to the server about one task ------------------------------------------

    async def _send_loop(self, run: _Run) -> None:
        """Sends the task's output, progress and lease renewals, in order, until the
        handler is done and everything is sent, or the task is no longer ours."""
        ctx = run.ctx
        renew_every = _renew_interval(ctx.lease_expires_at)
        next_renew = time.monotonic() + renew_every
        backoff = Backoff()
        while True:
            if ctx._reason not in (None, "shutdown"):
                return
            shutting = ctx._reason == "shutdown"
            if run.finishing and time.monotonic() > run.finish_deadline:
                log.warning("task %s: could not send its last output in time", ctx.id)
                return
            if run.pending is None and ctx._has_output():
                if not (run.finishing or shutting or ctx._batch_ready()):
                    # Linger a moment so the chunks written meanwhile share the request.
                    await asyncio.sleep(self.flush_interval)
                run.pending = ctx._take_batch()
            if run.pending:
                kind, sent = "output", await self._post(
                    ctx.id, "output", {"chunks": run.pending}
                )
                if sent is True:
                    run.pending = None
            elif shutting:
                return  # the rest (release) is the shutdown's
            elif ctx._take_progress() is not None:
                update = ctx._take_progress()
                assert update is not None
                kind, sent = "progress", await self._post(ctx.id, "progress", _progress_body(*update))
                if sent is True:
                    ctx._progress_sent(update)
            elif run.finishing:
                return
            elif time.monotonic() >= next_renew:
                body = {"progress": ctx._last_progress}
                kind, sent = "renewal", await self._post(ctx.id, "progress", body)
            else:
                ctx._wake.clear()
                if not ctx._has_output() and ctx._take_progress() is None and ctx._reason is None:
                    await _first(ctx._wake.wait(), asyncio.sleep(next_renew - time.monotonic()))
                continue
            if sent is True:
                backoff.reset()
                next_renew = time.monotonic() + renew_every
                continue
            if isinstance(sent, ApiError):
                if kind == "output" and is_missing_route(sent):
                    # A server older than task output (contract v1): the task can
                    # still be done, its output just has nowhere to go.
                    if not self._warned_no_output:
                        self._warned_no_output = True
                        log.warning("this server does not store task output; output is dropped")
                    run.pending = None
                    ctx._drop_output()
                    continue
                if sent.status == 413 and kind == "output":
                    log.warning("task %s: output limit reached; dropping further output", ctx.id)
                    ctx._output_error = OutputLimitExceeded(sent.message)
                    run.pending = None
                    ctx._drop_output()
                    continue
                if sent.status == 409 and sent.code == "canceled":
                    log.info("task %s was canceled", ctx.id)
                    ctx._stop("canceled")
                    return
                if sent.status in (404, 409):
                    log.info("task %s is no longer ours (%s)", ctx.id, sent.code)
                    ctx._stop("lost")
                    return
                if sent.status == 401:
                    ctx._stop("lost")
                    self._fail_agent(sent)
                    return
                if 400 <= sent.status < 500 and sent.status != 429:
                    # The server will not take this request however often it is sent.
                    log.error("task %s: %s refused: %s", ctx.id, kind, sent)
                    if kind == "output":
                        run.pending = None
                    elif kind == "progress":
                        ctx._progress_sent(ctx._take_progress() or (0, None))
                    continue
            if shutting:
                return  # no time to wait out trouble while stopping
            pause = backoff.next()
            if isinstance(sent, ApiError) and sent.retry_after:
                pause = max(pause, sent.retry_after)
            log.warning("task %s: %s failed (%s); retrying in %.1f s", ctx.id, kind, _describe(sent), pause)
            await _first(asyncio.sleep(pause), _until_stopped(ctx))

    async def _post(
        self, task_id: str, what: str, body: Dict[str, Any], timeout: float = 10.0
    ) -> Union[bool, ApiError, httpx.HTTPError]:
        """One runtime call about a task: True when accepted, else what went wrong."""
        assert self._http is not None
        try:
            response = await self._http.post(
                f"/api/v1/runtime/tasks/{task_id}/{what}", json=body, timeout=timeout
            )
        except httpx.HTTPError as err:
            return err
        if response.is_success:
            return True
        return error_from_response(response)

    async def _report(self, run: _Run, outcome: Tuple[Any, ...]) -> None:
        """Sends ``complete`` or ``fail``, retrying trouble until ``REPORT_FOR_S``."""
        ctx = run.ctx
        if outcome[0] == "completed":
            what, body = "complete", {"result": outcome[1]}
        else:
            what, body = "fail", {"error": outcome[1], "retryable": outcome[2]}
        backoff = Backoff()
        give_up = time.monotonic() + REPORT_FOR_S
        while True:
            sent = await self._post(ctx.id, what, body)
            if sent is True:
                log.info("task %s: %s reported", ctx.id, what)
                return
            if isinstance(sent, ApiError):
                if sent.status == 413 and what == "complete":
                    what = "fail"
                    body = {"error": "the result is larger than the server accepts", "retryable": False}
                    continue
                if sent.status == 401:
                    self._fail_agent(sent)
                    return
                if 400 <= sent.status < 500 and sent.status != 429:
                    log.info("task %s: %s not accepted (%s)", ctx.id, what, sent.code)
                    return
            if time.monotonic() > give_up:
                log.warning("task %s: giving up reporting %s (%s)", ctx.id, what, _describe(sent))
                return
            pause = backoff.next()
            log.warning("task %s: %s failed (%s); retrying in %.1f s", ctx.id, what, _describe(sent), pause)
            await asyncio.sleep(pause)

    # -- stopping ----------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Hands every unfinished task back, then gives handlers a bounded time."""
        assert self._stop_event is not None
        self._stop_event.set()
        releasing = []
        for run in list(self._runs.values()):
            if run.finishing or run.ctx._reason is not None:
                continue  # its report is on its way, or it is not ours any more
            run.ctx._stop("shutdown")
            releasing.append(self._release(run))
        if releasing:
            await asyncio.gather(*releasing)
        mains = [run.main for run in self._runs.values() if run.main is not None]
        if mains:
            _, pending = await asyncio.wait(mains, timeout=self.shutdown_grace)
            for main in pending:
                main.cancel()
            if pending:
                log.warning("%d handler(s) did not return within %.0f s of the stop", len(pending), self.shutdown_grace)
                await asyncio.wait(pending, timeout=1.0)

    async def _release(self, run: _Run) -> None:
        """Sends what the handler wrote before the stop, then ``release``."""
        ctx = run.ctx
        give_up = time.monotonic() + RELEASE_FOR_S
        if run.sender is not None:
            try:
                await asyncio.wait_for(asyncio.shield(run.sender), timeout=RELEASE_FOR_S / 2)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                run.sender.cancel()
        while True:
            sent = await self._post(ctx.id, "release", {}, timeout=max(1.0, give_up - time.monotonic()))
            if sent is True:
                log.info("task %s handed back", ctx.id)
                return
            if isinstance(sent, ApiError):
                if is_missing_route(sent):
                    # A server without `release`: a retryable failure also hands the
                    # task back at once, though it uses up an attempt.
                    body = {"error": "the agent stopped before finishing", "retryable": True}
                    await self._post(ctx.id, "fail", body)
                    return
                if 400 <= sent.status < 500 and sent.status != 429:
                    return  # canceled or gone meanwhile: nothing to hand back
            if time.monotonic() + 0.5 > give_up:
                log.warning("task %s: could not hand it back (%s); its lease will expire", ctx.id, _describe(sent))
                return
            await asyncio.sleep(0.5)


def _progress_body(n: float, message: Optional[str]) -> Dict[str, Any]:
    body: Dict[str, Any] = {"progress": n}
    if message is not None:
        body["message"] = message
    return body


def _renew_interval(lease_expires_at: Optional[str]) -> float:
    """A third of the lease as the server gave it, within bounds, so two renewals can
    fail before the lease is lost."""
    expires = parse_time(lease_expires_at) if lease_expires_at else None
    if expires is None:
        return MAX_RENEW_S
    lease = (expires - datetime.now(timezone.utc)).total_seconds()
    return min(MAX_RENEW_S, max(MIN_RENEW_S, lease / 3))


async def _first(*aws: Awaitable[Any]) -> None:
    """Waits until the first of ``aws`` finishes; cancels the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()


async def _until_stopped(ctx: TaskContext) -> None:
    while ctx._reason is None:
        ctx._wake.clear()
        await ctx._wake.wait()


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass  # the loop is closed: the agent has stopped and nobody waits for this


def _describe(err: Any) -> str:
    if isinstance(err, ApiError):
        return f"{err.status} {err.code}"
    if isinstance(err, httpx.HTTPError):
        return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return str(err)
