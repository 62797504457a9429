"""The harness: the real ``zerostate`` binary on a free port, accounts and agents on it.

The binary comes from ``ZEROSTATE_BIN`` (default: ``target/debug/zerostate`` in the
repository). Each server gets its own temporary data directory; each test its own server, so
no test can take another's tasks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import httpx
import pytest

from zerostate import Agent, Client

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("ZEROSTATE_BIN", REPO / "target" / "debug" / "zerostate"))
PASSWORD = "correct horse battery"
#: How long "eventually" conditions may take on a loaded machine.
WAIT_S = 60.0


class Server:
    """One ``zerostate serve`` process with its own data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = 0
        self.process: Optional[subprocess.Popen[str]] = None
        self.log_path = data_dir / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> None:
        if not BIN.exists():
            raise RuntimeError(f"no server binary at {BIN} (build it, or set ZEROSTATE_BIN)")
        env = dict(os.environ)
        env.update(
            {
                "ZEROSTATE_REGISTRATION_LIMIT": "0",
                "ZEROSTATE_MAX_CONNECTIONS_PER_ADDRESS": "0",
                "RUST_LOG": "info",
            }
        )
        for name in ("ZEROSTATE_DATABASE_URL", "ZEROSTATE_REDIS_URL", "ZEROSTATE_ADDR"):
            env.pop(name, None)
        log = open(self.log_path, "a")
        process = subprocess.Popen(
            [str(BIN), "serve", "--addr", f"127.0.0.1:{port}", "--data-dir", str(self.data_dir), "--no-builtin-agent"],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
        log.close()
        assert process.stdout is not None
        found: List[int] = []

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith("zerostate listening on http://") and not found:
                    found.append(int(line.strip().rsplit(":", 1)[1]))
            # Keeps draining until the process exits, so it never blocks on the pipe.

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 30
        while not found:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"server did not start within 30 s; see {self.log_path}")
            time.sleep(0.02)
        self.port = found[0]
        self.process = process

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stops the server and starts it again on the same port and data directory."""
        port = self.port
        self.stop()
        deadline = time.monotonic() + 30
        while True:
            try:
                self.start(port)
                return
            except RuntimeError:
                # The port can stay busy for a moment after the old process exits.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    # -- setup calls -------------------------------------------------------------------

    def call(self, method: str, path: str, token: Optional[str] = None, body: Any = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, self.url + path, json=body, headers=headers, timeout=60)

    def new_user(self) -> "User":
        email = f"sdk-{uuid.uuid4().hex}@example.com"
        r = self.call("POST", "/api/v1/users/register", body={"email": email, "password": PASSWORD, "full_name": "SDK Test"})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        r = self.call("POST", "/api/v1/api-keys", token, {"name": "sdk tests"})
        assert r.status_code == 201, r.text
        return User(self, token, r.json()["key"])



class User:
    """A signed-up account with an API key."""

    def __init__(self, server: Server, token: str, api_key: str) -> None:
        self.server = server
        self.token = token
        self.api_key = api_key
        self.client = Client(server.url, api_key=api_key)

    def register_agent(self, capabilities: Tuple[str, ...] = ("general",)) -> Tuple[Dict[str, Any], str]:
        name = f"sdk-agent-{uuid.uuid4().hex[:8]}"
        r = self.server.call(
            "POST", "/api/v1/agents/register", self.token, {"name": name, "capabilities": list(capabilities)}
        )
        assert r.status_code == 201, r.text
        return r.json()["agent"], r.json()["agent_token"]

    def agent(self, **options: Any) -> Agent:
        """A fresh registered agent for this user (not yet running)."""
        _, token = self.register_agent()
        return Agent(self.server.url, token, **options)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own: no task another test left queued can reach this
    test's agents, whatever the server's agent visibility rules."""
    s = Server(tmp_path)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def user(server: Server) -> Iterator[User]:
    u = server.new_user()
    yield u
    u.client.close()


@contextmanager
def running(agent: Agent) -> Iterator[Agent]:
    """Runs the agent in a thread for the block; stops it after, and re-raises what
    ended it early."""
    errors: List[BaseException] = []

    def main() -> None:
        try:
            agent.run()
        except BaseException as err:  # noqa: BLE001 - reported to the test
            errors.append(err)

    thread = threading.Thread(target=main, name="agent", daemon=True)
    thread.start()
    try:
        yield agent
    finally:
        agent.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "agent did not stop within 30 s"
    if errors:
        raise errors[0]


def wait_until(what: str, condition: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Polls until ``condition()`` is truthy and returns it; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


PYTHON = sys.executable
