"""The log writer's own process: it holds the HDF5 file so that h5py never pauses the rollout.

h5py holds the GIL while HDF5 compresses, checksums and writes a batch, so a writer *thread* stalls
the rollout's thread for that long (about 4% of a 64-env MuJoCo rollout). With ``LogWriter(...,
process=True)`` the caller still fills batches and its background thread still orders them, but
that thread only hands each batch to this process and waits, without the GIL, for the commit.

Protocol: two pipes, one JSON object per line. The batches themselves are in shared memory
(``multiprocessing.shared_memory``), written by the caller before it sends their name.

    parent -> child   {"op": "init", "fps": F, "fields": [[path, offset, shape, dtype], ...],
                       "blocks": [NAME, ...]}                          -> {"ready": true}
                      {"op": "write", "shm": NAME, "n": N, "s0": S0}   -> {"n_committed": S0 + N}
                      {"op": "close", "status": STATUS}                -> {"closed": true}
    child -> parent   or {"error": "..."} for any failure

The batch pool is fixed: the child maps every block at "init", and the parent then unlinks their
names, so a crash of either process (or both) leaves nothing in /dev/shm.

The commit order is commit.write_batch's, as in the thread. When the parent dies (SIGKILL, OOM)
the child reads end-of-file, closes the file without marking an end status (a crashed run, every
committed row kept) and exits. Terminal signals are ignored here: Ctrl-C reaches the parent, which
ends the run and sends "close" with status interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import IO, Any, Dict, List, Optional, Sequence

import numpy as np

START_TIMEOUT_S = 120.0
"""How long the parent waits for the child to import h5py and open the file (a cold disk is slow)."""


class WriterProcessError(Exception):
    """The writer process failed (its message says why) or ended unexpectedly."""


class WriterProcess:
    """Parent side: start the child, hand it batches by shared-memory name, return its commits.

    Called from the LogWriter's background thread (write) and from close; not thread-safe.
    """

    def __init__(self, path: str, batches: Sequence[Any], fps: int) -> None:
        """Start the child and wait until it has opened the file and mapped every batch's block.

        Raises:
            WriterProcessError: the child could not open the file or map the blocks.
        """
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # The child imports exactly what this process imports (a script's own sys.path included).
        code = (
            "import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
            "from moetape.schema.writer_process import main; main(sys.argv[2:])"
        )
        args = [json.dumps(sys.path), path, str(to_child_r), str(from_child_w)]
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code] + args,
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.path = path
        self._tx: IO[bytes] = os.fdopen(to_child_w, "wb", buffering=0)
        self._rx: IO[bytes] = os.fdopen(from_child_r, "rb")
        try:
            self._send(
                {
                    "op": "init",
                    "fps": fps,
                    "fields": [list(row) for row in batches[0].table],
                    "blocks": [b.shm.name for b in batches],
                }
            )
            self._reply("ready")
        except BaseException:
            self.close(None)
            raise
        for b in batches:
            b.unlink()

    def write(self, batch: Any, s0: int) -> int:
        """Have the child commit ``batch`` (its n rows after step s0); return the committed step count."""
        self._send({"op": "write", "shm": batch.shm.name, "n": batch.n, "s0": s0})
        return int(self._reply("n_committed"))

    def close(self, status: Optional[str]) -> None:
        """Have the child mark the end ``status`` and close the file; wait for it to exit.

        ``status`` None: just end the child (it closes the file without marking a status).
        """
        try:
            if status is not None:
                self._send({"op": "close", "status": status})
                self._reply("closed")
        finally:
            self._tx.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._rx.close()

    def exit_status(self) -> Optional[int]:
        """Return the child's exit status if it has ended (minus the signal that ended it), else None.

        The child is not reaped (``os.waitid`` with WNOWAIT), and no lock is taken: safe to call from
        the main thread, where ``Popen.poll`` is not (a Ctrl-C landing just after ``poll`` takes the
        Popen's wait lock leaves it taken, and the ``wait`` at close blocks forever). None, too, where
        the platform has no ``os.waitid``: the writer thread's ``Popen.poll`` notices the end there.
        """
        if self.proc.returncode is not None:
            return int(self.proc.returncode)
        waitid = getattr(os, "waitid", None)
        if waitid is None:
            return None
        try:
            info = waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped already, by a Popen call that set returncode meanwhile
            return None if self.proc.returncode is None else int(self.proc.returncode)
        if info is None:
            return None
        exited = getattr(os, "CLD_EXITED", 1)  # in os from Python 3.9; 1 on Linux and macOS
        return info.si_status if info.si_code == exited else -info.si_status  # else killed: the signal

    def _send(self, msg: Dict[str, Any]) -> None:
        try:
            self._tx.write((json.dumps(msg) + "\n").encode("utf-8"))
        except (BrokenPipeError, ValueError):
            raise self._ended() from None

    def _reply(self, key: str) -> Any:
        line = self._rx.readline()
        if not line:
            raise self._ended()
        msg = json.loads(line)
        if "error" in msg:
            raise WriterProcessError(msg["error"])
        return msg[key]

    def _ended(self) -> WriterProcessError:
        try:
            code: Optional[int] = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        return WriterProcessError(f"the log writer process ended unexpectedly (exit status {code})")


# ------------------------------------------------------------------------------------ child side
def main(argv: List[str]) -> None:
    """Child entry point: ``main([path, read_fd, write_fd])``; exits the process when done."""
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
    path, rfd, wfd = argv[0], int(argv[1]), int(argv[2])
    rx = os.fdopen(rfd, "rb")
    tx = os.fdopen(wfd, "wb", buffering=0)

    def send(msg: Dict[str, Any]) -> None:
        try:
            tx.write((json.dumps(msg) + "\n").encode("utf-8"))
        except BrokenPipeError:
            pass  # the parent is gone; the file is still closed below

    # os._exit: after a failed write, h5py 3.16 / HDF5 2.0 can crash while freeing its objects at
    # interpreter exit; the file is closed (or abandoned after a failure) before this point.
    os._exit(_serve(path, rx, send))


def _serve(path: str, rx: IO[bytes], send: Any) -> int:
    from moetape.schema.commit import mark_end, write_batch
    from moetape.schema.io import open_for_append

    try:
        f = open_for_append(path)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        send({"error": _describe(e)})
        return 1
    dsids: Dict[str, Any] = {}
    segments: Dict[str, Any] = {}
    fields: List[Any] = []
    fps = 1
    n_committed = 0
    failed = False
    try:
        for line in rx:
            msg = json.loads(line)
            op = msg["op"]
            if op == "init":
                fps, fields = int(msg["fps"]), msg["fields"]
                try:
                    dsids = {row[0]: f[row[0]].id for row in fields}
                    for name in msg["blocks"]:
                        _attach(segments, name)
                except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
                    send({"error": _describe(e)})
                    break
                send({"ready": True})
            elif op == "write":
                if failed:
                    send({"error": "an earlier write failed"})
                    continue
                try:
                    if int(msg["s0"]) != n_committed:
                        raise RuntimeError(f"batch starts at step {msg['s0']}, {n_committed} are committed")
                    rows = _rows(_attach(segments, msg["shm"]), fields, int(msg["n"]), fps)
                    n_committed = write_batch(f, dsids, rows, n_committed, int(msg["n"]), fps)
                    del rows
                    send({"n_committed": n_committed})
                except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
                    failed = True
                    send({"error": _describe(e)})
            elif op == "close":
                mark_end(f, msg["status"])
                dsids.clear()
                _close_quietly(f)
                send({"closed": True})
                return 0
        # End of input without "close": the parent died. The status stays "running" (a crashed run).
        dsids.clear()
        _close_quietly(f)
        return 0
    finally:
        for shm in segments.values():
            try:
                shm.close()
            except BufferError:  # a failed write's traceback may still view it; the exit frees it
                pass


def _rows(shm: Any, fields: List[Any], n: int, fps: int) -> Dict[str, np.ndarray]:
    """Return path -> the batch's first n steps' rows, viewed in the shared block (no copy)."""
    from moetape.schema.commit import filled_rows

    arrays = {
        path: np.ndarray(tuple(shape), dtype=np.dtype(dtype), buffer=shm.buf, offset=int(offset))
        for path, offset, shape, dtype in fields
    }
    return filled_rows(arrays, n, fps)


def _attach(segments: Dict[str, Any], name: str) -> Any:
    """Map the parent's shared-memory block ``name`` (at init, before the parent unlinks it)."""
    shm = segments.get(name)
    if shm is None:
        from multiprocessing import shared_memory

        if sys.version_info >= (3, 13):
            shm = shared_memory.SharedMemory(name=name, track=False)  # novermin - guarded
        else:  # attaching registers the block with a resource tracker that would unlink it at exit
            from multiprocessing import resource_tracker

            shm = shared_memory.SharedMemory(name=name)
            resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
        segments[name] = shm
    return shm


def _close_quietly(f: Any) -> None:
    try:
        f.close()
    except Exception:  # noqa: BLE001 - after a failed write (disk full); committed rows stay readable
        pass


def _describe(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
