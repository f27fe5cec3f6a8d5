"""JSON-lines events and stop requests for a training process that another process follows.

The GUI runs ``solardesk train`` as a subprocess, reads one JSON object per line from its stdout
and writes ``stop`` to its stdin to end it cleanly. Each event is a JSON object with at least
``event`` (``started``, ``progress``, ``metrics``, ``checkpoint``, ``warning``, ``weights``,
``finished``, ``error``) and ``time`` (UTC, ISO 8601). Non-finite numbers become ``null`` so
every line is strict JSON. Nothing else is printed on stdout; messages for people go to stderr.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

__all__ = ["JsonLines", "StopListener", "jsonable", "now"]


def now() -> str:
    """UTC time in ISO 8601 with milliseconds, as events carry it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def jsonable(value: Any) -> Any:
    """``value`` with NaN/inf replaced by ``None`` and paths and other objects as strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    try:
        return jsonable(float(value))  # numpy and torch scalars
    except (TypeError, ValueError):
        return str(value)


class JsonLines:
    """Writes each event as one flushed line of strict JSON (thread-safe)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        if "time" not in event:
            event = {"event": event.get("event"), "time": now(), **event}
        line = json.dumps(jsonable(event), allow_nan=False, separators=(",", ":"))
        stream = self.stream or sys.stdout
        with self._lock:
            stream.write(line + "\n")
            stream.flush()


class StopListener:
    """Sets ``stop`` on SIGTERM, on the first SIGINT and on a line ``stop`` on stdin.

    A second SIGINT restores Python's default handling (KeyboardInterrupt), for a user who
    really wants out now. Use as a context manager; handlers are restored on exit.

    ``on_request(why)`` is called once, from a watcher thread, never from the signal handler:
    a handler runs in the main thread between two bytecodes, possibly while that thread holds
    the lock of the JSON-lines writer, and writing from it would deadlock.
    """

    def __init__(
        self,
        stop: threading.Event,
        *,
        stdin: IO[str] | None = None,
        listen_stdin: bool = True,
        on_request: Callable[[str], None] | None = None,
    ) -> None:
        self.stop = stop
        self.stdin = stdin
        self.listen_stdin = listen_stdin
        self.on_request = on_request
        self.why: str | None = None
        self._old: dict[int, Any] = {}
        self._closed = threading.Event()

    def _request(self, why: str) -> None:
        # Only flags: safe in a signal handler.
        if not self.stop.is_set():
            self.why = why
            self.stop.set()

    def _signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGINT and self.stop.is_set():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self._request(signal.Signals(signum).name)

    def _watch(self) -> None:
        self.stop.wait()  # wakes at once when set; a daemon, so it never holds up an exit
        if self.on_request is not None and not self._closed.is_set():
            self.on_request(self.why or "request")

    def _read_stdin(self) -> None:
        stream = self.stdin or sys.stdin
        if stream is None:
            return
        try:
            for line in stream:
                if line.strip().lower() == "stop":
                    self._request("stdin")
                    return
        except (OSError, ValueError):  # stdin closed under us
            return

    def __enter__(self) -> StopListener:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._signal)
        if self.listen_stdin:
            threading.Thread(target=self._read_stdin, name="stop-on-stdin", daemon=True).start()
        self._watcher = threading.Thread(target=self._watch, name="stop-watcher", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        if self.stop.is_set():
            self._watcher.join(timeout=1.0)  # let it report the request it saw
        self._closed.set()
