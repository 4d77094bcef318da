"""The one place where h5py is opened and its errors become moetape errors (STYLE §2.4).

Output-path handling (resolve_output, check_output, atomic_output) lives in schema/outputs.py and
is re-exported here.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any, Dict, List, NamedTuple, Optional

import h5py

from moetape.schema.errors import LogReadError, LogWriteError, OutputExistsError
from moetape.schema.outputs import (  # noqa: F401 - re-exported for callers
    FILE,
    ZARR_STORE,
    OutputKind,
    _short,
    atomic_output,
    check_output,
    describe_path,
    is_kind,
    remove_tree,
    resolve_output,
)

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
READER_CACHE: Dict[str, Any] = {"rdcc_nbytes": 1 << 20}
"""A reader's chunk cache per dataset: 1 MiB (HDF5 2.0's default of 8 MiB per dataset made a reader
streaming a long log hold up to 8 MiB x its fields; readers read each chunk about once)."""


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


SWMR_READ_ATTEMPTS = 24
"""Metadata read attempts of a SWMR reader (HDF5's default is 100). HDF5 sleeps between attempts,
doubling from 1 ns, so N attempts wait about 2**N ns in all on a block whose checksum fails: 24 is
~17 ms, ample for a block the writer is rewriting at that moment, while the default 100 makes a
damaged block hang the reader for good (30 attempts already take 1 s, 35 take 34 s)."""

WRITE_ACCESS_FLAGS = 0x01 | 0x04
"""Superblock v3 file-consistency flags: opened for writing (0x01), for SWMR writing (0x04).
HDF5 clears them on a clean close; a killed writer leaves them set."""


class Superblock(NamedTuple):
    """What a version 2/3 superblock (the kind moetape writes) says about its file."""

    version: int
    flags: int
    """File-consistency flags (WRITE_ACCESS_FLAGS); 0 once the writer closed the file."""
    eof: int
    checksum_ok: bool


def read_superblock(path: str) -> Optional[Superblock]:
    """Return the version 2/3 superblock at offset 0 (8-byte addresses), or None for another kind."""
    with open(path, "rb") as f:
        head = f.read(48)
    if len(head) < 48 or head[:8] != HDF5_SIGNATURE or head[8] not in (2, 3) or head[9] != 8:
        return None
    stored = struct.unpack("<I", head[44:48])[0]
    return Superblock(
        version=head[8],
        flags=head[11],
        eof=int(struct.unpack("<Q", head[28:36])[0]),
        checksum_ok=lookup3(head[:44]) == stored,
    )


def lookup3(data: bytes, initval: int = 0) -> int:
    """Return Bob Jenkins' lookup3 hashlittle of ``data``: HDF5's metadata checksum."""
    mask = 0xFFFFFFFF

    def rot(x: int, k: int) -> int:
        return ((x << k) | (x >> (32 - k))) & mask

    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & mask
    i = 0
    while n > 12:
        x, y, z = struct.unpack_from("<III", data, i)
        a, b, c = (a + x) & mask, (b + y) & mask, (c + z) & mask
        a = (a - c) & mask ^ rot(c, 4)
        c = (c + b) & mask
        b = (b - a) & mask ^ rot(a, 6)
        a = (a + c) & mask
        c = (c - b) & mask ^ rot(b, 8)
        b = (b + a) & mask
        a = (a - c) & mask ^ rot(c, 16)
        c = (c + b) & mask
        b = (b - a) & mask ^ rot(a, 19)
        a = (a + c) & mask
        c = (c - b) & mask ^ rot(b, 4)
        b = (b + a) & mask
        n -= 12
        i += 12
    if n == 0:
        return c
    x, y, z = struct.unpack("<III", data[i:] + bytes(12 - n))
    a, b, c = (a + x) & mask, (b + y) & mask, (c + z) & mask
    c = (c ^ b) - rot(b, 14) & mask
    a = (a ^ c) - rot(c, 11) & mask
    b = (b ^ a) - rot(a, 25) & mask
    c = (c ^ b) - rot(b, 16) & mask
    a = (a ^ c) - rot(c, 4) & mask
    b = (b ^ a) - rot(a, 14) & mask
    c = (c ^ b) - rot(b, 24) & mask
    return c


def needs_swmr(path: str) -> bool:
    """Return True if the log must be opened as a SWMR reader: a writer holds it open, or was killed.

    A log whose writer closed it (consistency flags 0) opens as a plain reader, which fails at once
    on damaged metadata instead of retrying. A superblock that fails its checksum is read again a
    few times (a live writer may be rewriting it); a damaged one opens plainly, so HDF5 refuses it.
    """
    for attempt in range(5):
        sb = read_superblock(path)
        if sb is None:
            return False
        if sb.checksum_ok:
            return bool(sb.flags & WRITE_ACCESS_FLAGS)
        time.sleep(0.01 * (attempt + 1))
    return False


def open_for_read(path: str, *, check_length: bool = True, swmr: Optional[bool] = None) -> h5py.File:
    """Open a log read-only: plainly if its writer closed it, else as a SWMR reader with bounded retries.

    Args:
        swmr: force SWMR reading on (a log that may still be written) or off; None decides from the
            superblock's consistency flags (``needs_swmr``).

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
        use_swmr = needs_swmr(path) if swmr is None else swmr
    except OSError as e:
        raise LogReadError(f"{path}: cannot read ({e.strerror or e}).") from e
    if not is_hdf5:
        raise LogReadError(f"{path}: not an HDF5 file (no HDF5 signature), expected a moetape .h5 log.")
    short = is_short(path)
    if short and swmr is None:
        use_swmr = True  # a plain reader refuses a short file outright; a SWMR reader reads what is there
    if check_length and short:
        _probe_short_file(path)
    try:
        if use_swmr:
            return _open_swmr_reader(path)
        return h5py.File(path, "r", **READER_CACHE, **LOCKING)
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        first = e
    if not use_swmr and "already open for write" in str(first):
        try:  # flags set after all: the superblock changed between our look and HDF5's
            return _open_swmr_reader(path)
        except (OSError, RuntimeError, ValueError, KeyError):
            pass
    raise LogReadError(
        f"{path}: HDF5 file cannot be opened ({_short(first)}); its {_damaged_part(first)} is damaged or "
        "the file is truncated. Restore a copy; `moetape salvage` recovers what is still readable."
    ) from first


def _damaged_part(e: BaseException) -> str:
    """Name the part of an HDF5 file an open error points at, in a few words."""
    text = str(e)
    if "superblock" in text or "signature" in text:
        return "superblock (the file's first bytes)"
    return "metadata (superblock, object headers or B-tree nodes)"


def _open_swmr_reader(path: str) -> h5py.File:
    """Open ``path`` as a SWMR reader whose metadata retries are bounded (SWMR_READ_ATTEMPTS).

    h5py has no call for H5Pset_metadata_read_attempts, so it is called in the HDF5 library h5py
    loaded (ctypes). Where that library cannot be found, a child process opens the file first,
    with a timeout, so a damaged file is refused instead of hanging this one.
    """
    from h5py._hl.files import make_fapl

    fapl = make_fapl(None, locking=LOCKING.get("locking"), **READER_CACHE)
    if not _bound_read_attempts(fapl):
        _probe_open(path)
        return h5py.File(path, "r", swmr=True, **READER_CACHE, **LOCKING)
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=fapl)
    return h5py.File(fid)


_SET_ATTEMPTS: List[Any] = []
"""The ctypes H5Pset_metadata_read_attempts of h5py's HDF5, or None once it proved unavailable."""


def _bound_read_attempts(fapl: Any) -> bool:
    """Set SWMR_READ_ATTEMPTS on ``fapl``; return False if h5py's HDF5 library cannot be reached."""
    if not _SET_ATTEMPTS:
        _SET_ATTEMPTS.append(_find_set_attempts())
    setter = _SET_ATTEMPTS[0]
    return setter is not None and setter(fapl.id, SWMR_READ_ATTEMPTS) >= 0


def _find_set_attempts() -> Any:
    """Return H5Pset_metadata_read_attempts from the one libhdf5 this process has loaded, else None."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:  # Linux: the libraries mapped into this process
            libs = {line.split()[-1] for line in f if "/libhdf5" in line and "_hl" not in line}
    except OSError:
        return None
    if len(libs) != 1:  # none found, or two HDF5 libraries: which one h5py uses is unknown
        return None
    try:
        lib = ctypes.CDLL(libs.pop())  # already loaded: the same library and ids as h5py's
        setter = lib.H5Pset_metadata_read_attempts
        getter = lib.H5Pget_metadata_read_attempts
    except (OSError, AttributeError):
        return None
    setter.argtypes, setter.restype = [ctypes.c_int64, ctypes.c_uint], ctypes.c_int
    getter.argtypes, getter.restype = [ctypes.c_int64, ctypes.POINTER(ctypes.c_uint)], ctypes.c_int
    probe = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    got = ctypes.c_uint()
    if setter(probe.id, 7) < 0 or getter(probe.id, ctypes.byref(got)) < 0 or got.value != 7:
        return None
    return setter


def _probe_open(path: str) -> None:
    """Open ``path`` as a SWMR reader in a child process, with a timeout; raise if it fails or hangs."""
    import subprocess
    import sys

    code = f"import sys, h5py; h5py.File(sys.argv[1], 'r', swmr=True, **{LOCKING!r}).close()"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, path], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
        why = _short(RuntimeError(proc.stderr.strip().splitlines()[-1])) if proc.returncode else ""
    except subprocess.TimeoutExpired:
        why = f"no answer in {PROBE_TIMEOUT_S:.0f} s: HDF5 kept retrying a block whose checksum fails"
    if why:
        raise LogReadError(
            f"{path}: HDF5 file cannot be opened ({why}); its metadata is damaged or the file is "
            "truncated. Restore a copy; `moetape salvage` recovers what is still readable."
        )


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


H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)
"""What h5py raises on damaged metadata or data: OSError mostly, KeyError when opening an object,
RuntimeError while visiting, ValueError/TypeError for a garbled datatype or dataspace message."""


def read_dataset(ds: Any, selection: Any, where: str) -> Any:
    """Read ``ds[selection]``, turning HDF5 read failures (bad checksum, truncation) into LogReadError."""
    try:
        return ds[selection]
    except (OSError, RuntimeError, KeyError) as e:
        raise LogReadError(
            f"{where}: {ds.name}: cannot read data ({_short(e)}); the file is corrupt or truncated. "
            "Run `moetape verify` for details."
        ) from e
