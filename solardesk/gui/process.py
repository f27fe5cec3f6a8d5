"""Run a ``solardesk`` subcommand in its own process and follow what it reports.

Training and detection run as subprocesses (DESIGN.md §4): a GPU fault, an out-of-memory kill
or a crash in native code takes down the child, never the app, and GPU memory is freed when
the child ends. :class:`CommandProcess` wraps ``QProcess`` (asynchronous, on the event loop;
no thread of ours waits on a pipe):

* stdout lines that are JSON objects with an ``"event"`` (or ``"type"``) key are emitted as
  ``event(dict)``: the JSON-lines contract of ``solardesk train`` (started, progress, metrics,
  checkpoint, finished, error);
* stderr is split on newlines *and* carriage returns (progress bars redraw with ``\\r``);
  a tqdm line ``n/total`` becomes ``progressText(n, total)``, anything else ``log(text)``;
* ``exited(ExitInfo)`` says how it ended, with the last lines of output for an error report.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from dataclasses import dataclass

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, Signal, Slot

_TQDM = re.compile(r"(\d+)/(\d+)\s*\[")
_TAIL_LINES = 40


@dataclass(frozen=True)
class ExitInfo:
    code: int | None  #: exit code, ``None`` if it never started
    crashed: bool  #: killed by a signal or crashed
    finished_event: bool  #: it reported ``finished``
    error_event: str | None  #: message of its last ``error`` event
    error: str | None  #: why it could not start, if it did not
    tail: str  #: its last lines of output
    stopped: bool  #: we asked it to stop or killed it

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.crashed and self.error_event is None


class CommandProcess(QObject):
    event = Signal(dict)
    log = Signal(str)
    progressText = Signal(int, int)
    started = Signal()
    exited = Signal(object)

    def __init__(self, command: list[str], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.command = list(command)
        self.proc: QProcess | None = None
        self._out = b""
        self._err = b""
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self._finished_event = False
        self._error_event: str | None = None
        self._stop_requested = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.state() != QProcess.ProcessState.NotRunning

    def start(self, args: list[str], cwd: str | None = None) -> None:
        if self.running:
            raise RuntimeError("the process is already running")
        self._out = self._err = b""
        self.tail.clear()
        self._finished_event = False
        self._error_event = None
        self._stop_requested = False
        proc = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")  # events must arrive as they happen
        env.insert("PYTHONIOENCODING", "utf-8")
        proc.setProcessEnvironment(env)
        if cwd:
            proc.setWorkingDirectory(cwd)
        proc.readyReadStandardOutput.connect(self._read_stdout)
        proc.readyReadStandardError.connect(self._read_stderr)
        proc.finished.connect(self._on_finished)
        proc.errorOccurred.connect(self._on_error)
        proc.started.connect(self.started)
        self.proc = proc
        program, *first = self.command
        self.log.emit("$ " + " ".join([os.path.basename(program), *first, *args]))
        proc.start(program, [*first, *args])

    def write_line(self, text: str) -> bool:
        """Send one line to the child's stdin (e.g. ``"stop"``)."""
        if not self.running:
            return False
        self.proc.write((text.rstrip("\n") + "\n").encode())
        return True

    def request_stop(self) -> None:
        """Ask the child to stop (``stop`` on stdin): it finishes its step and saves."""
        self._stop_requested = True
        self.write_line("stop")

    def terminate(self) -> None:
        if self.running:
            self._stop_requested = True
            self.proc.terminate()

    def kill(self) -> None:
        if self.running:
            self._stop_requested = True
            self.proc.kill()

    def wait(self, ms: int) -> bool:
        return self.proc is None or self.proc.waitForFinished(ms)

    # -- reading -----------------------------------------------------------------------------
    @Slot()
    def _read_stdout(self) -> None:
        if self.proc is None:
            return
        self._out += bytes(self.proc.readAllStandardOutput())
        *lines, self._out = self._out.split(b"\n")
        for raw in lines:
            self._stdout_line(raw.decode("utf-8", "replace").strip())

    def _stdout_line(self, line: str) -> None:
        if not line:
            return
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if isinstance(obj, dict) and isinstance(obj.get("event", obj.get("type")), str):
                obj.setdefault("event", obj.get("type"))
                if obj["event"] == "finished":
                    self._finished_event = True
                elif obj["event"] == "error":
                    self._error_event = str(obj.get("message") or obj.get("error") or "error")
                self.event.emit(obj)
                return
        self.tail.append(line)
        self.log.emit(line)

    @Slot()
    def _read_stderr(self) -> None:
        if self.proc is None:
            return
        self._err += bytes(self.proc.readAllStandardError())
        *parts, self._err = re.split(rb"[\r\n]", self._err)
        for raw in parts:
            self._stderr_line(raw.decode("utf-8", "replace").rstrip())

    def _stderr_line(self, line: str) -> None:
        if not line.strip():
            return
        m = _TQDM.search(line)
        if m and "|" in line:
            self.progressText.emit(int(m.group(1)), int(m.group(2)))
            return
        self.tail.append(line)
        self.log.emit(line)

    def _flush(self) -> None:
        if self._out.strip():
            self._stdout_line(self._out.decode("utf-8", "replace").strip())
        if self._err.strip():
            self._stderr_line(self._err.decode("utf-8", "replace").rstrip())
        self._out = self._err = b""

    # -- ending ---------------------------------------------------------------------------------
    @Slot(int, QProcess.ExitStatus)
    def _on_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        self._read_stdout()
        self._read_stderr()
        self._flush()
        info = ExitInfo(
            code=code,
            crashed=status == QProcess.ExitStatus.CrashExit,
            finished_event=self._finished_event,
            error_event=self._error_event,
            error=None,
            tail="\n".join(self.tail),
            stopped=self._stop_requested,
        )
        self.proc.deleteLater()
        self.proc = None
        self.exited.emit(info)

    @Slot(QProcess.ProcessError)
    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error != QProcess.ProcessError.FailedToStart or self.proc is None:
            return  # crashes are reported by finished()
        message = f"could not start {self.command[0]}: {self.proc.errorString()}"
        self.proc.deleteLater()
        self.proc = None
        self.exited.emit(ExitInfo(None, False, False, None, message, "\n".join(self.tail), False))
