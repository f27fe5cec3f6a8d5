"""Run core jobs (generators yielding progress records) on a ``QThreadPool``.

A job is a generator (DESIGN.md §4). :class:`JobRunner` wraps it in a ``QRunnable`` and gives
back a :class:`Job`, a ``QObject`` whose signals the GUI connects to:

* ``progress(record)``: what the generator yielded, at most every ``progress_interval`` s
  (the last record is never dropped), so a fast job cannot flood the event loop;
* ``finished(result)``: the generator's return value;
* ``errored(JobError)``: it raised (the runner also posts the error to the notification area);
* ``cancelled()``: :meth:`Job.cancel` took effect;
* ``ended()``: after any of the three above, once all their receivers have run.

Cancelling closes the generator *on the worker thread* at its next yield, so its ``finally``
blocks (which may own a SQLite connection, which must stay on its thread) run where they
belong and keep what was finished. Only plain data crosses threads: the generator is created
and driven on the worker, and results reach the GUI thread through queued signals. Workers
never touch a widget.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal, Slot

from solardesk.errors import SolarDeskError


@dataclass(frozen=True)
class JobError:
    """Why a job failed, as data: a message for people and the traceback for a bug report."""

    job: str
    message: str
    exc_type: str
    details: str
    user_error: bool  #: a :class:`SolarDeskError` (bad input), not a bug

    @classmethod
    def from_exception(cls, job: str, e: BaseException) -> JobError:
        user = isinstance(e, SolarDeskError)
        msg = str(e) or type(e).__name__
        if not user:
            msg = f"{type(e).__name__}: {msg}"
        return cls(
            job=job,
            message=msg,
            exc_type=type(e).__name__,
            details="".join(traceback.format_exception(e)),
            user_error=user,
        )


class Job(QObject):
    """A handle on one job running on a thread pool (see the module docstring)."""

    progress = Signal(object)
    finished = Signal(object)
    errored = Signal(object)
    cancelled = Signal()
    ended = Signal()
    #: Emitted by the worker after its last signal (finished, errored or cancelled): queued
    #: behind every event those posted, for every receiver, so ``ended`` comes after them all.
    _closed = Signal()

    _ids = itertools.count(1)

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self.id = next(self._ids)
        self._cancel = threading.Event()
        self.state = "queued"  # queued → running → finished | errored | cancelled
        self.result: Any = None
        self.error: JobError | None = None
        self.last_progress: Any = None
        # Bound slots of this QObject (which lives on the GUI thread): queued when a worker
        # emits, so the state below only ever changes on the GUI thread.
        self.progress.connect(self._remember_progress)
        self.finished.connect(self._on_finished)
        self.errored.connect(self._on_errored)
        self.cancelled.connect(self._on_cancelled)
        self._closed.connect(self._on_closed)

    def cancel(self) -> None:
        """Ask the job to stop at its next yield (a no-op once it has ended)."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def running(self) -> bool:
        return self.state in ("queued", "running")

    @Slot(object)
    def _remember_progress(self, p: Any) -> None:
        self.last_progress = p

    @Slot(object)
    def _on_finished(self, result: Any) -> None:
        self._end("finished", result=result)

    @Slot(object)
    def _on_errored(self, error: JobError) -> None:
        self._end("errored", error=error)

    @Slot()
    def _on_cancelled(self) -> None:
        self._end("cancelled")

    def _end(self, state: str, *, result: Any = None, error: JobError | None = None) -> None:
        self.state = state
        self.result = result
        self.error = error

    @Slot()
    def _on_closed(self) -> None:
        # Not a zero timer started in _end: the worker posts a signal's events to its receivers
        # one by one, so this job's own finished call could run (and a timer fire) before the
        # worker had posted a later receiver's (seen on a loaded machine: a dock read "ended"
        # before its "finished" arrived). _closed is emitted after all of them.
        self.ended.emit()


# --------------------------------------------------------------------------------------------
# Worker threads
# --------------------------------------------------------------------------------------------
# PySide6 runs each QRunnable.run() between PyGILState_Ensure and PyGILState_Release, so a
# pool thread gets a fresh Python thread state for every run. Code that keeps per-thread
# state in ``threading.local`` (pyproj's CRS objects do, and rasterio/GDAL keep per-thread
# handles) then crashes the process intermittently: measured here with PySide6 6.12, pyproj
# 3.7 and rasterio 1.4, even with a single pool thread, while the same work on Python threads
# never failed (docs/adr/0021-worker-threads.md). So each pool thread takes one extra
# PyGILState_Ensure on its first run, which keeps its thread state for the thread's life,
# and pool threads never expire (a thread id is then never reused by another thread).
_pinned: set[int] = set()
_pin_lock = threading.Lock()
_pools: dict[str, QThreadPool] = {}


def _pin_thread_state() -> None:
    ident = threading.get_native_id()
    if ident in _pinned:
        return
    import ctypes

    ensure = ctypes.pythonapi.PyGILState_Ensure
    ensure.restype = ctypes.c_int
    ensure()  # never released: this thread keeps its Python state until it ends
    with _pin_lock:
        _pinned.add(ident)


def shared_pool(name: str, max_threads: int) -> QThreadPool:
    """The process-wide pool ``name`` (created once; its threads live as long as the app)."""
    pool = _pools.get(name)
    if pool is None:
        pool = QThreadPool()
        pool.setObjectName(f"solardesk-{name}")
        pool.setExpiryTimeout(-1)
        pool.setMaxThreadCount(max(1, max_threads))
        _pools[name] = pool
    return pool


class _Runnable(QRunnable):
    def __init__(
        self,
        job: Job,
        factory: Callable[[], Generator[Any, None, Any]],
        progress_interval: float,
    ) -> None:
        super().__init__()
        self.setAutoDelete(False)  # the runner keeps it until the job has ended
        self.job = job
        self.factory = factory
        self.progress_interval = progress_interval
        self.started = False
        self.done = threading.Event()

    def run(self) -> None:
        _pin_thread_state()
        try:
            self._run()
        finally:
            self.job._closed.emit()
            self.done.set()

    def _run(self) -> None:
        job = self.job
        if job.cancel_requested:
            job.cancelled.emit()
            return
        job.state = "running"
        gen = None
        try:
            gen = self.factory()
            last_emit = 0.0
            pending = None
            while True:
                if job.cancel_requested:
                    gen.close()
                    if pending is not None:
                        job.progress.emit(pending)
                    job.cancelled.emit()
                    return
                try:
                    record = next(gen)
                except StopIteration as stop:
                    if pending is not None:
                        job.progress.emit(pending)
                    job.finished.emit(stop.value)
                    return
                now = time.monotonic()
                if now - last_emit >= self.progress_interval:
                    job.progress.emit(record)
                    last_emit = now
                    pending = None
                else:
                    pending = record
        except BaseException as e:
            job.errored.emit(JobError.from_exception(job.name, e))
        finally:
            if gen is not None:
                # Closing after an error: the first error is the one that matters.
                with contextlib.suppress(Exception):
                    gen.close()


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Generator[None, None, Any]:
    """A job of one function call (no progress): ``runner.submit(lambda: call(f, x))``."""
    return fn(*args, **kwargs)
    yield  # pragma: no cover - makes this a generator


_DELETE_DELAY_MS = 2000


class JobRunner(QObject):
    """Starts jobs on a shared ``QThreadPool`` and keeps them alive until they end.

    Runners with the same ``name`` share one process-wide pool of ``max_threads`` threads
    (see :func:`shared_pool`); :meth:`shutdown` waits for this runner's own jobs only.

    ``on_error`` (typically the notification centre's ``post_job_error``) receives every
    :class:`JobError` unless the job was submitted with ``notify=False``.
    """

    jobStarted = Signal(object)
    jobEnded = Signal(object)

    def __init__(
        self,
        name: str,
        max_threads: int | None = None,
        on_error: Callable[[JobError], None] | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.name = name
        self.pool = shared_pool(name, max_threads or QThreadPool.globalInstance().maxThreadCount())
        self.on_error = on_error
        self._closed = False
        self._active: dict[int, tuple[Job, _Runnable]] = {}

    def submit(
        self,
        factory: Callable[[], Generator[Any, None, Any]],
        name: str,
        *,
        progress_interval: float = 0.05,
        notify: bool = True,
    ) -> Job:
        """Run the generator that ``factory`` creates (on the worker thread); return its Job."""
        job = Job(name, self)
        runnable = _Runnable(job, factory, progress_interval)
        self._active[job.id] = (job, runnable)
        if notify and self.on_error is not None:
            job.errored.connect(self.on_error)
        job.ended.connect(self._on_job_ended)
        self.jobStarted.emit(job)
        # Started from the event loop, so that the caller connects its slots first: a fast
        # job could otherwise end before anyone listens.
        QTimer.singleShot(0, self, lambda: self._start(runnable))
        return job

    def _start(self, runnable: _Runnable) -> None:
        if self._closed:
            return
        runnable.started = True
        self.pool.start(runnable)

    @Slot()
    def _on_job_ended(self) -> None:
        job = self.sender()
        if not isinstance(job, Job):
            return
        self._active.pop(job.id, None)
        self.jobEnded.emit(job)
        # Other receivers may still have this job's queued signals to handle, and PySide drops
        # those when the sender is deleted: free it a little later.
        QTimer.singleShot(_DELETE_DELAY_MS, job.deleteLater)

    @property
    def active_jobs(self) -> list[Job]:
        return [j for j, _ in self._active.values()]

    def unfinished(self) -> int:
        """How many of this runner's jobs have not ended yet (read off the worker threads, not
        the GUI thread's queued "ended" signals, so it holds while the GUI thread waits)."""
        return sum(not runnable.done.is_set() for _job, runnable in self._active.values())

    def cancel_all(self) -> None:
        for job, _ in list(self._active.values()):
            job.cancel()

    def shutdown(self, timeout_ms: int = 10000, *, finish: bool = False) -> bool:
        """Cancel this runner's jobs, drop those not started and wait for the others.

        With ``finish``, nothing is cancelled or dropped: the jobs not started yet are started
        now, in the order they were submitted, and all are waited for (the cache edits of the
        review, which a closing window must not lose). False when some did not end in time.
        """
        self._closed = True
        if finish:
            for _job, runnable in list(self._active.values()):
                if not runnable.started:
                    runnable.started = True
                    self.pool.start(runnable)
        else:
            self.cancel_all()
        deadline = time.monotonic() + timeout_ms / 1000
        ok = True
        for _job, runnable in list(self._active.values()):
            if not finish and (not runnable.started or self.pool.tryTake(runnable)):
                continue  # never started
            ok &= runnable.done.wait(max(0.0, deadline - time.monotonic()))
        return ok
