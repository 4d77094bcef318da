"""The one place where h5py is opened and its errors become moetape errors (STYLE §2.4)."""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import time
from typing import Any, Dict, Iterator, Optional

import h5py

from moetape.schema.errors import LogReadError, LogWriteError, OutputExistsError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
LIBVER = ("v110", "v110")
"""HDF5 object formats of a log: 1.10's, the oldest with SWMR. "latest" under HDF5 2.0 writes layout
messages that HDF5 1.14 (h5py 3.11, h5dump, HDFView, the Python 3.8 recorder machines) cannot read."""

WRITER_CACHE_BYTES = 0
"""No HDF5 chunk cache for the writer: full batches write whole chunks (batch-aligned chunking), so
a cache only holds finished chunks, one per open dataset (~45), and the writer's RSS grew with it.
A partial batch (time-based flush) then costs a read-modify-write of its edge chunks."""

LOCK_WAIT_S = 10.0
"""How long the writer process retries reopening its log while another program holds a file lock."""


def _no_file_locking() -> Dict[str, Any]:
    """``locking=False`` where h5py's HDF5 has the option (1.10.7+, 1.12.1+), else nothing.

    moetape opens every log without HDF5's file lock. A reader (``moetape follow``, a test polling the
    file) holding its shared lock in the moment between the recorder creating a log and its writer
    process reopening it would keep the recording from starting. SWMR needs no lock, a new log is
    created exclusively, and one process opening a file twice must use the same locking flag.
    """
    v = h5py.version.hdf5_version_tuple
    return {"locking": False} if v >= (1, 12, 1) or (1, 10, 7) <= v < (1, 11) else {}


LOCKING = _no_file_locking()


def looks_like_hdf5(path: str) -> bool:
    """Return True if the file starts with the HDF5 signature (at offset 0, the usual place)."""
    with open(path, "rb") as f:
        return f.read(8) == HDF5_SIGNATURE


def stored_eof(path: str) -> Optional[int]:
    """Return the end-of-file address a version 2/3 superblock records (the format moetape writes), else None.

    A SWMR reader does not compare it with the file size (the file may be growing), so a truncated
    file would make HDF5 retry metadata reads for a long time instead of failing: check it first.
    """
    with open(path, "rb") as f:
        head = f.read(48)
    if len(head) < 36 or head[8] not in (2, 3) or head[9] != 8:
        return None
    return int(struct.unpack("<Q", head[28:36])[0])


def open_for_read(path: str, *, check_length: bool = True) -> h5py.File:
    """Open a log read-only, in SWMR mode so crashed and still-being-written logs open too.

    Raises:
        LogReadError: missing, a directory, not HDF5, truncated or otherwise unreadable.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise LogReadError(f"{path}: no such file. Check the path.")
    if os.path.isdir(path):
        raise LogReadError(f"{path}: is a directory, expected a moetape .h5 log file.")
    if os.path.getsize(path) == 0:
        raise LogReadError(f"{path}: empty file, expected a moetape .h5 log. It was never written.")
    try:
        is_hdf5 = looks_like_hdf5(path)
    except OSError as e:
        raise LogReadError(f"{path}: cannot read ({e.strerror or e}).") from e
    if not is_hdf5:
        raise LogReadError(f"{path}: not an HDF5 file (no HDF5 signature), expected a moetape .h5 log.")
    if check_length and is_short(path):
        _probe_short_file(path)
    try:
        return h5py.File(path, "r", swmr=True, **LOCKING)
    except OSError as e:
        pass_e = e
    try:  # a file never written in SWMR mode may refuse the SWMR flag on some HDF5 builds
        return h5py.File(path, "r", **LOCKING)
    except OSError as e:
        raise LogReadError(
            f"{path}: HDF5 file cannot be opened ({_short(pass_e)}); it may be truncated or corrupt. "
            "Run `moetape verify` on it or restore a copy."
        ) from e


def is_short(path: str) -> bool:
    """Return True if the file is shorter than the end-of-file its HDF5 superblock records."""
    eof = stored_eof(path)
    return eof is not None and eof > os.path.getsize(path)


PROBE_TIMEOUT_S = 10.0


def _probe_short_file(path: str) -> None:
    """Decide whether a short file still holds every committed row, in a child process.

    A file shorter than HDF5 recorded is either a truncated copy (committed data lost) or a log
    whose disk filled up while recording (only the failed, uncommitted writes are missing). A SWMR
    reader cannot tell: on missing metadata it retries for a very long time instead of failing,
    so the check runs in a child process with a timeout.

    Raises:
        LogReadError: the committed rows are not all in the file (truncated).
    """
    import subprocess
    import sys

    code = "import sys; from moetape.schema.reader import Log; Log(sys.argv[1], check_length=False).close()"
    size = os.path.getsize(path)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, path], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
        ok = proc.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    if not ok:
        eof = stored_eof(path)
        raise LogReadError(
            f"{path}: file is shorter than HDF5 recorded ({size} of {eof} bytes) and its committed data cannot "
            f"be read. If the disk filled up while recording, `truncate -s {eof} {path}` (appends a sparse "
            "hole, no data) makes every committed step readable; a truncated copy cannot be repaired: restore it."
        )


def sha256_file(path: str, *, block: int = 4 << 20) -> str:
    """Return the hex sha256 of a file's bytes (checkpoints, trajectories, logs, derived files)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for data in iter(lambda: f.read(block), b""):
            h.update(data)
    return h.hexdigest()


def create_for_write(path: str, *, force: bool = False) -> h5py.File:
    """Create a new log file for appending (SWMR-capable); never overwrites unless ``force``.

    Raises:
        OutputExistsError: the path exists and force is False.
        LogWriteError: the file cannot be created.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not force:
        raise OutputExistsError(f"{path}: exists. Choose another path or pass --force to overwrite.")
    try:
        return h5py.File(
            path,
            "w" if force else "w-",
            libver=LIBVER,
            rdcc_nbytes=WRITER_CACHE_BYTES,
            rdcc_w0=1.0,
            **LOCKING,
        )
    except (OSError, ValueError) as e:
        raise LogWriteError(f"{path}: cannot create the log ({_short(e)}).") from e


def open_for_append(path: str) -> h5py.File:
    """Reopen a log that create_for_write made (and closed) as its SWMR writer (the writer process).

    Raises:
        LogWriteError: the file cannot be opened for writing.
    """
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            f = h5py.File(path, "r+", libver=LIBVER, rdcc_nbytes=WRITER_CACHE_BYTES, rdcc_w0=1.0, **LOCKING)
            break
        except OSError as e:
            if "lock" not in str(e) or time.monotonic() > deadline:
                raise LogWriteError(f"{path}: cannot open the log for writing ({_locked_hint(e)}).") from e
            time.sleep(0.05)  # an HDF5 without locking=False, and a locking reader; usually brief
        except ValueError as e:
            raise LogWriteError(f"{path}: cannot open the log for writing ({_short(e)}).") from e
    try:
        f.swmr_mode = True
        return f
    except (OSError, ValueError) as e:
        f.close()
        raise LogWriteError(f"{path}: cannot open the log for writing ({_short(e)}).") from e


def _locked_hint(e: BaseException) -> str:
    if "lock" not in str(e):
        return _short(e)
    return (
        f"another program has held it open with an HDF5 file lock for {LOCK_WAIT_S:.0f} s: close it, "
        "or run that program with HDF5_USE_FILE_LOCKING=FALSE"
    )


def read_dataset(ds: Any, selection: Any, where: str) -> Any:
    """Read ``ds[selection]``, turning HDF5 read failures (bad checksum, truncation) into LogReadError."""
    try:
        return ds[selection]
    except OSError as e:
        raise LogReadError(
            f"{where}: {ds.name}: cannot read data ({_short(e)}); the file is corrupt or truncated. "
            "Run `moetape verify` for details."
        ) from e


def check_output(path: str, *, force: bool) -> None:
    """Raise OutputExistsError if ``path`` exists and ``force`` is False."""
    if os.path.lexists(path) and not force:
        raise OutputExistsError(f"{path}: exists. Choose another path or pass --force to overwrite.")


@contextlib.contextmanager
def atomic_output(path: str, *, force: bool = False, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    Raises:
        OutputExistsError: ``path`` exists and ``force`` is False.
    """
    path = os.fspath(path)
    check_output(path, force=force)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=suffix + ".tmp", dir=directory
    )
    os.close(fd)
    os.remove(tmp)
    try:
        yield tmp
        if os.path.isdir(path) and force:
            import shutil

            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            if os.path.isdir(tmp):
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.remove(tmp)


def _short(e: BaseException) -> str:
    """Return the first line of an exception's message."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
