"""What the agent and the client share: the server's base URL, headers, backoff."""

from __future__ import annotations

import random
import re
from datetime import datetime, timezone
from typing import Dict, Optional

__version__ = "0.1.0"

USER_AGENT = f"zerostate-python/{__version__}"


def base_url(server: str) -> str:
    """``http(s)://host:port`` without a trailing slash; rejects anything else early,
    so a typo fails at construction rather than on the first request."""
    url = server.strip().rstrip("/")
    if not (url.startswith("http://") or url.startswith("https://")):
        raise ValueError(f"server must be an http:// or https:// URL, got {server!r}")
    return url


def auth_headers(secret: Optional[str]) -> Dict[str, str]:
    headers = {"User-Agent": USER_AGENT}
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    return headers


class Backoff:
    """Capped exponential backoff with full jitter, so a fleet of agents or clients does
    not reconnect in lockstep after a server restart."""

    def __init__(self, first: float = 0.25, cap: float = 10.0) -> None:
        self.first = first
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.first * float(2 ** min(self.failures, 16)))
        self.failures += 1
        # At least a quarter of the ceiling: full jitter from zero would retry at once
        # now and then, which is no pause at all for a server that is down.
        return ceiling / 4 + random.random() * ceiling * 3 / 4

    def reset(self) -> None:
        self.failures = 0


_FRACTION = re.compile(r"\.(\d+)")


def parse_time(raw: str) -> Optional[datetime]:
    """Parses an RFC 3339 time (any number of fraction digits, ``Z`` or an offset);
    None when it is not one."""
    text = raw.strip().replace("Z", "+00:00").replace("z", "+00:00")
    # Older Pythons take at most six fraction digits; the server may send nine.
    text = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC, as the server expects (naive datetimes are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
