"""Long work as generators, and a process pool that feeds them.

A job is a generator: it yields a :class:`Progress` record at least once per tile and returns
its result (``StopIteration.value``). Every yield is a point where cancelling takes effect:
closing the generator (``gen.close()``) stops it there, and whatever it had finished is kept.
The CLI drives a job with a progress bar (:func:`drive`); the GUI wraps the same generator in
a ``QRunnable``.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Progress:
    """One step of a long job: plain data, safe to send across threads."""

    done: int
    total: int
    elapsed_s: float
    message: str = ""
    skipped: int = 0
    item: str | None = None
    extra: dict[str, Any] | None = None

    @property
    def fraction(self) -> float:
        return 1.0 if self.total == 0 else min(1.0, self.done / self.total)

    @property
    def rate(self) -> float:
        """Items computed per second (skipped items excluded)."""
        computed = self.done - self.skipped
        return computed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        r = self.rate
        if r <= 0:
            return None
        return (self.total - self.done) / r


class Clock:
    """Elapsed seconds since creation (monotonic)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def counted(n: int, noun: str) -> str:
    """``"1 panel"``, ``"3 panels"``: a count and its noun, for progress and summary lines."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def default_workers() -> int:
    """One worker per available core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _exit_with_parent(parent_pid: int, every_s: float = 1.0) -> None:
    """Exit this worker process once its parent is gone (killed with ``kill -9``, which runs
    no clean-up): else the workers would compute on, orphaned, holding the rasters open."""
    while True:
        time.sleep(every_s)
        if os.getppid() != parent_pid:
            os._exit(1)


def _start_worker(parent_pid: int, initializer: Callable | None, initargs: tuple) -> None:
    threading.Thread(
        target=_exit_with_parent, args=(parent_pid,), name="parent-watch", daemon=True
    ).start()
    if initializer is not None:
        initializer(*initargs)


def map_unordered(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int = 1,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    max_in_flight: int | None = None,
) -> Iterator[R]:
    """Apply ``fn`` to ``items`` in ``workers`` processes, yielding results as they finish.

    ``workers <= 1`` runs in this process (no pickling, easiest to debug). Processes use the
    ``spawn`` start method (a ``fork`` pool hung after OpenCV had run in the parent). At most
    ``max_in_flight`` items (default ``2 × workers``) are submitted at once, so memory stays
    flat however many items there are. Closing the iterator cancels what has not started and
    shuts the pool down.
    """
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield fn(item)
        return
    limit = max_in_flight or 2 * workers
    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=_start_worker,
        initargs=(os.getpid(), initializer, initargs),
    )
    pending: set[Future] = set()
    it = iter(items)
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < limit:
                try:
                    pending.add(pool.submit(fn, next(it)))
                except StopIteration:
                    exhausted = True
            if not pending:
                break
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                yield f.result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM) while :func:`drive` ran a job: it unwinds like
    Ctrl-C, so the job commits what has finished and shuts its workers down."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (elsewhere, or
    where signals cannot be set, nothing changes). Without it the default action ends the
    process at once: the pool's workers and queues were left to the resource tracker, which
    printed a warning about leaked semaphores."""

    def stop(signum, frame):
        raise Terminated

    try:
        old = signal.signal(signal.SIGTERM, stop)
    except (ValueError, OSError, AttributeError):  # not the main thread, or no SIGTERM
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def drive(job: Generator[Progress, None, R], *, show: bool = True, label: str = "") -> R:
    """Run ``job`` to completion with a tqdm progress bar (rate and ETA) on stderr. SIGTERM
    stops it as Ctrl-C does (:class:`Terminated`, a ``KeyboardInterrupt``)."""
    with _sigterm_unwinds():
        return _drive(job, show=show, label=label)


def _drive(job: Generator[Progress, None, R], *, show: bool, label: str) -> R:
    from tqdm import tqdm

    bar = None
    try:
        while True:
            try:
                p = next(job)
            except StopIteration as stop:
                return stop.value
            if show:
                if bar is None:
                    # Skipped (already cached) items count as the bar's start, not in its rate.
                    bar = tqdm(
                        total=p.total,
                        initial=p.skipped,
                        desc=label,
                        unit="tile",
                        dynamic_ncols=True,
                    )
                elif p.done < bar.n or p.total != bar.total:  # the job moved to a new phase
                    # The new phase's skipped items are its start; without this the rate
                    # counts from the last phase's start and can go negative.
                    bar.initial = min(p.skipped, p.done)
                    bar.reset(total=p.total)
                if p.message:
                    bar.set_postfix_str(p.message, refresh=False)
                bar.update(p.done - bar.n)
    finally:
        job.close()
        if bar is not None:
            bar.close()
