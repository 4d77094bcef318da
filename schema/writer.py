"""Append policy steps to an event log: buffered batches, one background thread, crash-safe commits.

The caller hands in one policy step for all envs at a time (numpy arrays). Steps are copied
into a batch buffer (or their frames written there in place: ``frame_rows``); full batches go
through a bounded queue to a thread that owns the h5py handle and, per batch: resizes, writes the
rows, raises ``n_committed``, then flushes. A slow
disk blocks the caller (the queue is bounded), so memory never grows with run length. A partly
filled batch is committed at least every ``flush_seconds`` so a killed run loses at most that.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from moetape.schema import layout
from moetape.schema.batch import Batch
from moetape.schema.commit import mark_end, write_batch
from moetape.schema.errors import InputError, LogFormatError, LogWriteError
from moetape.schema.io import create_for_write
from moetape.schema.log_create import write_header
from moetape.schema.spec import (  # LogSpec, gate_entropy and chunk_shape are used from here too
    BATCH_TARGET_BYTES,
    CHUNK_TARGET_BYTES,
    MAX_BATCH_STEPS,
    LogSpec,
    chunk_shape,
    gate_entropy,
    pow2_floor,
)

__all__ = ["LogSpec", "LogWriter", "chunk_shape", "gate_entropy"]

_FILLED_FRAME_KEYS = frozenset({"step", "substep"})
"""frames/ fields the writer fills itself (append's caller gives the others)."""


class LogWriter:
    """Write a new event log; use as a context manager.

    Example:
        with LogWriter("run.h5", spec, meta={...}) as log:
            log.append(step_fields, frame_fields)

    ``append`` takes, per policy step, every steps/ field of layout.STEP_FIELDS keyed by name
    (arrays with a leading env axis E; ``gate_entropy`` and ``t_wall_s`` are filled in when
    absent), ``terms/<name>`` and ``metrics/<name>`` for the declared ones, and every frames/
    field with a leading axis of frames_per_step rows (``step``/``substep`` are filled in).

    To skip copying the frames (the largest fields), write them in place: ``rows = log.frame_rows()``
    gives views of the next step's frame rows in the batch being filled; fill them (a backend's
    ``step(..., frames_out=rows)`` does) and pass the same dict to ``append`` as ``frames``.

    ``stale_after_reset``: the steps/ and frames/ paths the backend leaves stale on a new episode's
    first step (BackendInfo.stale_after_reset); written as the optional root attribute of that name
    when not empty (see moetape.schema.layout).
    """

    def __init__(
        self,
        path: str,
        spec: LogSpec,
        *,
        meta: Optional[Mapping[str, Any]] = None,
        model_xml: Optional[str] = None,
        model_source: str = "",
        trajectory: Optional[Tuple[np.ndarray, np.ndarray, float]] = None,
        force: bool = False,
        batch_steps: Optional[int] = None,
        max_batches: int = 3,
        flush_seconds: float = 1.0,
        chunk_bytes: int = CHUNK_TARGET_BYTES,
        process: bool = False,
        stale_after_reset: Sequence[str] = (),
    ) -> None:
        spec.validate()
        self.path = os.fspath(path)
        self.spec = spec
        self.flush_seconds = float(flush_seconds)
        if not (math.isfinite(self.flush_seconds) and self.flush_seconds >= 0):
            raise InputError(
                f"{self.path}: flush_seconds {flush_seconds!r}: expected a number of seconds >= 0 "
                "(0 commits every step)"
            )
        self.chunk_bytes = int(chunk_bytes)
        self._specs = spec.datasets()
        self._stale = _check_stale(self.path, stale_after_reset, self._specs)
        # Per dataset, once (append runs every step): path, key in the step/frames dict, stream, row shape.
        self._fields = [
            (
                path,
                path.split("/", 1)[1],
                layout.stream_of(path),
                shape if not layout.stream_of(path) else (spec.frames_per_step,) + shape,
            )
            for path, (shape, _dtype) in self._specs.items()
        ]
        self._fps = spec.frames_per_step
        self._step_keys = {key for _p, key, stream, _s in self._fields if stream == 0}
        self._frame_keys = {key for _p, key, stream, _s in self._fields if stream != 0}
        self._substeps = np.arange(self._fps, dtype=np.int8)
        # frame_rows(): (batch, row, views dict, view per field or None), until the next append.
        self._reserved: Optional[Tuple[Batch, int, Dict[str, np.ndarray], List[Any]]] = None
        self._no_views: List[Any] = [None] * len(self._fields)
        step_bytes = sum(
            int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize * (self._fps if layout.stream_of(p) else 1)
            for p, (s, d) in self._specs.items()
        )
        self.batch_steps = int(
            batch_steps or pow2_floor(max(1, min(MAX_BATCH_STEPS, BATCH_TARGET_BYTES // step_bytes)))
        )
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self._shared = bool(process)
        # A fixed pool, touched now: fresh buffers would page-fault during the rollout's first batches,
        # and the writer process maps every block once. In use at most: the current batch, one
        # waiting for queue space, max_batches queued and one being written. Every failure from
        # here releases the pool (shared-memory blocks left open are reported leaked at exit).
        self._batches: List[Batch] = []
        try:
            for _ in range(max(1, max_batches) + 3):
                self._batches.append(Batch(self._specs, self.batch_steps, self._fps, shared=self._shared))
            self._file = create_for_write(self.path, force=force)
        except BaseException:
            self._release_batches()
            raise
        self._batch = self._batches[0]
        # Written batches come back for reuse.
        self._free: queue.SimpleQueue[Batch] = queue.SimpleQueue()
        for b in self._batches[1:]:
            self._free.put(b)
        self._queue: queue.Queue[Optional[Batch]] = queue.Queue(maxsize=max(1, max_batches))
        self._error: Optional[BaseException] = None
        self._dsids: Optional[Dict[str, Any]] = None
        self._writing = threading.Lock()  # held by the writer thread while it writes a batch
        self._closed = False
        self._stopped = False  # the writer thread has ended on the sentinel
        # At most this long between the writer thread's looks at a stale partial batch; at least 5 ms,
        # so a tiny or zero flush_seconds (0: every append queues its own step) never spins.
        self._poll_s = max(self.flush_seconds / 2, 0.005)
        self.n_appended = 0
        self.n_committed = 0
        self._child: Any = None
        try:
            write_header(
                self._file,
                self.spec,
                self._specs,
                meta=meta or {},
                model_xml=model_xml,
                model_source=model_source,
                trajectory=trajectory,
                stale=self._stale,
                chunks=self._chunks,
            )
            if process:
                from moetape.schema.writer_process import WriterProcess, WriterProcessError

                self._file.close()  # the writer process reopens it for SWMR appends
                try:
                    self._child = WriterProcess(self.path, self._batches, self._fps)
                except (OSError, WriterProcessError) as e:
                    raise LogWriteError(f"{self.path}: cannot start the log writer process ({e}).") from e
            else:
                self._file.swmr_mode = True
        except BaseException:
            self._file.close()
            self._release_batches()
            os.remove(self.path)
            raise
        self._thread = threading.Thread(target=self._run, name="moetape-log-writer", daemon=True)
        self._thread.start()

    def _chunks(self, path: str, shape: Tuple[int, ...], dtype: str) -> Tuple[int, ...]:
        """Chunk shape aligned with the batch (frames/ rows per batch = batch_steps * frames_per_step)."""
        rows = self.batch_steps * (self._fps if layout.stream_of(path) else 1)
        return chunk_shape(shape, np.dtype(dtype).itemsize, self.chunk_bytes, pow2_floor(rows))

    # ---------------------------------------------------------------- caller side
    def append(
        self, step: Mapping[str, np.ndarray], frames: Optional[Mapping[str, np.ndarray]] = None
    ) -> None:
        """Buffer one policy step of every env (see the class docstring for the keys).

        Raises:
            LogFormatError: a field is missing or has the wrong shape.
            LogWriteError: the writer thread failed or the log is closed.
        """
        self._check_writable()
        frames = frames or {}
        with self._lock:
            b = self._batch
            i = b.n
            problems = self._copy_row(b, i, step, frames)
            if problems:  # row i may be partly written; it is not counted, so the next append overwrites it
                raise LogFormatError(
                    "{}: step {}: {}".format(self.path, self.n_appended, "; ".join(problems))
                )
            if i == 0:
                b.first_row_t = time.monotonic()
            b.n += 1
            self.n_appended += 1
            if b.n >= b.capacity or time.monotonic() - b.first_row_t >= self.flush_seconds:
                # Queued under the lock, so batches reach the queue in the order they were taken.
                self._put(self._take_locked())

    def frame_rows(self) -> Dict[str, np.ndarray]:
        """Return views of the next step's frames/ rows in the batch being filled, to write in place.

        Pass the returned dict to the next ``append`` as ``frames``: rows still in place are not
        copied again. Each view is (frames_per_step, E, *shape) of its dataset's dtype; ``step`` and
        ``substep`` are not among them (append fills those). Valid until that append.

        Raises:
            LogWriteError: the writer thread failed or the log is closed.
        """
        self._check_writable()
        with self._lock:
            b, i = self._batch, self._batch.n
            cached = b.row_views[i]
            if cached is None:
                rows = slice(i * self._fps, (i + 1) * self._fps)
                by_field = [
                    dst[rows] if stream and key not in _FILLED_FRAME_KEYS else None
                    for (_path, key, stream, _want), dst in zip(self._fields, b.in_order)
                ]
                views = {f[1]: v for f, v in zip(self._fields, by_field) if v is not None}
                cached = b.row_views[i] = (views, by_field)
            out = dict(cached[0])  # the caller's own dict: it may replace entries
            self._reserved = (b, i, out, cached[1])
            return out

    def _copy_row(
        self, b: Batch, i: int, step: Mapping[str, np.ndarray], frames: Mapping[str, np.ndarray]
    ) -> List[str]:
        """Copy one step into row ``i`` of batch ``b``, filling derived fields; return the problems found.

        One pass, checking and copying together: this runs every step, in the rollout's thread.
        Frame rows filled in place (see frame_rows) are left as they are.
        """
        problems: List[str] = []
        fps, n = self._fps, self.n_appended
        r = self._reserved
        self._reserved = None
        # In place only if no stale partial batch was taken since frame_rows(); otherwise the
        # views point into that earlier batch, past its committed rows, and are copied from.
        in_place = r[3] if r is not None and frames is r[2] and r[0] is b and r[1] == i else self._no_views
        frame_rows = slice(i * fps, (i + 1) * fps)
        for (path, key, stream, want), dst, view in zip(self._fields, b.in_order, in_place):
            src = step if stream == 0 else frames
            rows = frame_rows if stream else i
            if key in src:
                value = src[key]
                if value is view and view is not None:
                    continue
                shape = getattr(value, "shape", None)
                if shape is None:
                    value = np.asarray(value)
                    shape = value.shape
                if shape != want:
                    problems.append(f"{path}: shape {shape}, expected {want}")
                    continue
                dst[rows] = value
            elif key == "gate_entropy" and "gate" in step:
                dst[rows] = gate_entropy(step["gate"])
            elif key == "t_wall_s":
                dst[rows] = time.monotonic() - self._t0
            elif key == "step":
                dst[rows] = n
            elif key == "substep":
                dst[rows] = self._substeps
            else:
                problems.append(f"{path}: missing")
        if not (self._step_keys.issuperset(step) and self._frame_keys.issuperset(frames)):
            extra = [k for k in step if k not in self._step_keys]
            extra += ["frames/" + k for k in frames if k not in self._frame_keys]
            if extra:
                problems.append(f"undeclared fields {sorted(extra)} (declare terms/metrics in the LogSpec)")
        return problems

    def _take_locked(self) -> Optional[Batch]:
        """Swap the filled batch for a fresh one (caller holds the lock)."""
        b = self._batch
        if b.n == 0:
            return None
        while True:  # the pool always has one free (see __init__) unless the writer failed
            try:
                self._batch = self._free.get(timeout=0.2)
                break
            except queue.Empty:
                self._raise_if_failed()
        self._batch.n = 0
        return b

    def _put(self, item: Optional[Batch]) -> None:
        """Queue a batch for the writer thread, blocking while the queue is full."""
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _check_writable(self) -> None:
        self._raise_if_failed()
        if self._closed:
            raise LogWriteError(f"{self.path}: the log is closed; cannot append.")

    def _raise_if_failed(self) -> None:
        if self._error is None:
            self._notice_dead_writer()
        if self._error is not None:
            e = self._error
            what = str(e).splitlines()[0] if str(e) else ""
            if type(e).__name__ != "WriterProcessError":  # whose message names the child's exception
                what = f"{type(e).__name__}: {what}"
            raise LogWriteError(
                f"{self.path}: writing the log failed ({what}). The {self.n_committed} steps committed "
                "before the failure are kept and readable; free disk space or pick another path, then "
                "record again."
            ) from e

    def _notice_dead_writer(self) -> None:
        """Record as the error a writer thread or process that ended without one (STYLE 6.4).

        The process is checked with ``WriterProcess.exit_status``, never ``Popen.poll``: this runs in
        the main thread at every append, where a Ctrl-C may land at any moment.
        """
        thread = getattr(self, "_thread", None)
        if thread is not None and not self._stopped and not thread.is_alive():
            self._error = LogWriteError("the log writer thread ended unexpectedly")
        elif self._child is not None and not self._closed:
            self._record_child_end(self._child.exit_status())

    def _notice_dead_child(self) -> None:
        """Writer thread only: ``Popen.poll`` the writer process (no signal lands in this thread)."""
        if self._child is not None and not self._closed and self._error is None:
            self._record_child_end(self._child.proc.poll())

    def _record_child_end(self, code: Optional[int]) -> None:
        if code is not None and self._error is None:
            from moetape.schema.writer_process import WriterProcessError

            self._error = WriterProcessError(
                f"the log writer process ended unexpectedly (exit status {code})"
            )

    def flush(self) -> None:
        """Commit every step appended so far and wait until it is on disk."""
        with self._lock:
            b = self._take_locked()
            if b is not None:
                self._put(b)
        done = self._queue.all_tasks_done  # the queue's condition, notified by task_done()
        with done:
            while self._queue.unfinished_tasks and self._thread.is_alive():
                done.wait(0.1)
        with self._writing:  # a stale partial batch the thread took itself may still be in flight
            pass
        self._raise_if_failed()

    def close(self, status: str = layout.STATUS_CLEAN) -> None:
        """Commit the remaining steps, mark the run's end status, and close the file (idempotent).

        Raises:
            LogWriteError: the writer thread failed (re-raised here as well as from append).
        """
        if self._closed:
            self._raise_if_failed()
            return
        self._closed = True
        try:
            try:
                with self._lock:
                    if self._error is None:
                        b = self._take_locked()
                        if b is not None:
                            self._put(b)
            finally:  # the thread drains the queue even after a failure, so this put returns
                if self._thread.is_alive():
                    self._queue.put(None)
                    self._thread.join()
        finally:
            if self._error is not None:
                status = layout.STATUS_FAILED
            if self._child is not None:
                try:
                    self._child.close(status)
                except BaseException as e:  # noqa: BLE001 - re-raised below
                    if self._error is None:
                        self._error = e.with_traceback(None)
            else:
                mark_end(self._file, status)
                self._dsids = None  # drop low-level ids before the file: freeing them later can crash HDF5
                try:
                    self._file.close()
                except Exception:  # noqa: BLE001
                    pass
            self._release_batches()
        self._raise_if_failed()

    def _release_batches(self) -> None:
        while self._batches:
            self._batches.pop().release()

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close(layout.STATUS_CLEAN)
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close(layout.STATUS_INTERRUPTED)
        else:
            try:
                self.close(layout.STATUS_FAILED)
            except LogWriteError:
                pass  # the exception that ended the block is the one to report

    # ---------------------------------------------------------------- writer thread
    def _run(self) -> None:
        """Own the h5py handle (see _serve); any failure of its own is the run's error, never only printed."""
        try:
            self._serve()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller (STYLE §6.4)
            if self._error is None:
                self._error = e.with_traceback(None)

    def _serve(self) -> None:
        """Write batches, commit, flush; commit stale partial batches."""
        while True:
            try:
                item = self._queue.get(timeout=self._poll_s)
            except queue.Empty:
                self._notice_dead_child()
                stale = self._take_stale()
                if stale is not None and self._error is None:
                    try:  # taken with the queue empty: every earlier row is written already
                        self._write(stale)
                    except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                        self._error = e.with_traceback(None)  # its frames would pin h5py ids past close
                continue
            try:
                if item is None:
                    self._stopped = True
                    return
                if self._error is None:
                    self._write(item)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller (STYLE §6.4)
                self._error = e.with_traceback(None)  # its frames would pin h5py ids past close
            finally:
                self._queue.task_done()

    def _take_stale(self) -> Optional[Batch]:
        """Take the caller's partial batch if it is older than flush_seconds and nothing is queued.

        The caller queues batches while holding the lock, so with the lock held and the queue empty
        every earlier row is already written and this batch is next in order. The timed acquire
        avoids a deadlock with a caller that holds the lock while waiting for queue space.
        """
        if not self._lock.acquire(timeout=0.05):
            return None
        try:
            b = self._batch
            if b.n == 0 or not self._queue.empty() or time.monotonic() - b.first_row_t < self.flush_seconds:
                return None
            return self._take_locked()
        finally:
            self._lock.release()

    def _write(self, b: Batch) -> None:
        with self._writing:
            self._write_locked(b)

    def _write_locked(self, b: Batch) -> None:
        if self._child is not None:
            s1 = self._child.write(b, self.n_committed)
        else:
            if self._dsids is None:
                self._dsids = {p: self._file[p].id for p in self._specs}
            s1 = write_batch(self._file, self._dsids, b.view(), self.n_committed, b.n, self._fps)
        self.n_committed = s1
        self._free.put(b)


def _check_stale(path: str, fields: Sequence[str], specs: Mapping[str, Any]) -> List[str]:
    """Return the stale_after_reset fields as a list; each must be a steps/ or frames/ dataset of the log."""
    out = [str(f) for f in fields]
    unknown = [f for f in out if f not in specs]
    if unknown:
        raise InputError(
            f"{path}: stale_after_reset names {unknown}, not datasets of this log; "
            "expected steps/ or frames/ paths such as 'steps/ee_pos' or 'frames/body_pos'"
        )
    return out
