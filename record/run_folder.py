"""The run folder of one recording: checked, locked for the run's life, replaced as a whole with --force.

A run folder holds log.h5 and the files moetape puts beside it (``is_run_file``). ``RunFolder.open``
refuses, with one line each: a path that is a file; a folder holding files moetape did not write
(--force or not: --force never deletes a user's files); a folder whose recording is still running
(--force or not); a finished run without --force.

While a run lives, LOCK_NAME in its folder holds the recording process's pid under an exclusive
``fcntl.flock``. The kernel drops the lock when the process ends, SIGKILL included, so a killed run
never leaves its folder locked. (HDF5's own file lock cannot serve: logs are opened with
locking=False so that live readers never block the writer.)

--force on a finished run moves the old run's files into ASIDE_NAME inside the folder. Once the new
run has its first step (``start``) they are deleted, so the folder is replaced as a whole (no old
derived.json, logs.pkl or video.mp4 beside the new log); a run that ends before its first step puts
them back (``abort``) and removes any folder it created, so a run that never started loses nothing
and leaves nothing. A run killed between ``open`` and ``start`` leaves the old files in ASIDE_NAME;
the next ``open`` of that folder puts them back first.
"""

from __future__ import annotations

import os
import shutil
from typing import List, Optional, Sequence

from moetape.schema.errors import OutputExistsError
from moetape.schema.outputs import missing_folders

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no live-run detection
    fcntl = None  # type: ignore[assignment]

LOG_NAME = "log.h5"
LOCK_NAME = ".moetape.lock"
ASIDE_NAME = ".moetape-replaced"
TRASH_NAME = ".moetape-replaced.delete"
_OWN = frozenset({LOCK_NAME, ASIDE_NAME, TRASH_NAME})

RUN_FILES = frozenset(
    {
        LOG_NAME,
        "video.mp4",  # record --record_video, render
        "derived.json",  # derive (its default folder is the log's)
        "derived",
        "weight_stats.pkl",
        "moe_results.pkl",
        "logs.zarr",
        "logs.pkl",
        "summary.json",
        "gate_panels.png",
        "timeline.png",
        "compare_timeline.png",
    }
)
"""What moetape writes into a run folder: the log and the files record, derive, export, render
and plot put beside it by default."""


def is_run_file(name: str) -> bool:
    """Return whether ``name`` in a run folder is one that moetape writes there.

    Besides RUN_FILES: ``demo_*`` (``moetape demo``'s checkpoints and trajectory) and the hidden
    ``.NAME.XXXX.tmp`` an output being written goes under until it is renamed into place.
    """
    return name in RUN_FILES or name.startswith("demo_") or (name.startswith(".") and name.endswith(".tmp"))


class RunFolder:
    """The run folder ``out`` of one recording; ``open``, then ``start`` or ``abort``, then ``close``.

    Args:
        out: the run folder (made if missing, with its missing parents).
        force: replace a finished run there.
        keep: this run's own input files; those inside the folder stay where they are.
    """

    def __init__(self, out: str, *, force: bool, keep: Sequence[Optional[str]] = ()) -> None:
        self.out = os.fspath(out)
        self.force = force
        self.log_path = os.path.join(self.out, LOG_NAME)
        self.started = False
        self._keep = {os.path.realpath(p) for p in keep if p}
        self._created: List[str] = []  # folders this run made, outermost first
        self._lock_fd: Optional[int] = None
        self._aside: List[str] = []  # the replaced run's entries, in ASIDE_NAME until start or abort
        self._opened = False  # from here a log.h5 in the folder is this run's

    # ------------------------------------------------------------------------------ checks
    def check(self) -> None:
        """Refuse what ``open`` refuses, without making or locking anything.

        Raises:
            OutputExistsError: see the module docstring.
        """
        self._check_path()
        if os.path.isdir(self.out):
            self._check_not_live()
            self._check_contents(self._entries())

    def _check_path(self) -> None:
        if os.path.lexists(self.out) and not os.path.isdir(self.out):
            raise OutputExistsError(
                f"{self.out}: exists and is a file; --out names a run folder (log.h5 goes inside it). "
                "Pick another --out"
            )

    def _entries(self) -> List[str]:
        """The folder's entries but moetape's own bookkeeping and this run's inputs."""
        return sorted(
            n
            for n in os.listdir(self.out)
            if n not in _OWN and os.path.realpath(os.path.join(self.out, n)) not in self._keep
        )

    def _check_contents(self, names: Sequence[str]) -> None:
        foreign = [n for n in names if not is_run_file(n)]
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise OutputExistsError(
                f"{self.out}: holds {len(foreign)} file(s) moetape did not write ({shown}); --out names a "
                "run folder, and --force replaces only one that moetape made. Pick a new --out (e.g. "
                f"{os.path.join(self.out, 'run1')}) or move those files"
            )
        if names and not self.force:
            what = (
                "a recording (log.h5)"
                if LOG_NAME in names
                else "moetape outputs ({})".format(", ".join(names))
            )
            raise OutputExistsError(
                f"{self.out}: holds {what}. Pick a new --out, or pass --force to replace that run folder as a whole"
            )

    def _live_error(self, fd: int) -> OutputExistsError:
        try:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        except OSError:
            pid = "unknown"
        return OutputExistsError(
            f"{self.out}: a recording is still running there (pid {pid}); a live run is never replaced, "
            "--force or not. Wait for it to end or stop it, or pick another --out"
        )

    def _check_not_live(self) -> None:
        path = os.path.join(self.out, LOCK_NAME)
        if fcntl is None or not os.path.exists(path):
            return
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                raise self._live_error(fd) from None
        finally:
            os.close(fd)  # closing drops the probe's lock

    # ------------------------------------------------------------------------------ life
    def open(self) -> str:
        """Make and lock the folder, set a finished run there aside (--force); return the log's path.

        Raises:
            OutputExistsError: see the module docstring; nothing is made or changed then.
        """
        self._check_path()
        if os.path.isdir(self.out):  # refuse a foreign folder before putting a lock file into it
            self._check_contents([n for n in self._entries() if not is_run_file(n)])
        self._make_folders()
        try:
            self._lock()
            self._recover()
            names = self._entries()
            self._check_contents(names)
            self._set_aside(names)
        except BaseException:
            self.abort()
            raise
        self._opened = True
        return self.log_path

    def start(self) -> None:
        """The new run has its first step: delete the replaced run's files (idempotent)."""
        if self.started:
            return
        if self._aside:
            trash = os.path.join(self.out, TRASH_NAME)
            # One rename: a kill from here on keeps the new log (the next open deletes the trash).
            os.rename(os.path.join(self.out, ASIDE_NAME), trash)
            self._aside = []
            self.started = True
            shutil.rmtree(trash, ignore_errors=True)
        self.started = True

    def abort(self) -> None:
        """The run ended before its first step: remove its log, put back what was there, remove
        the folders it made. Nothing once the run has started (its log is kept)."""
        if self.started:
            return
        if self._opened and os.path.lexists(self.log_path):
            os.remove(self.log_path)
        self._opened = False
        aside = os.path.join(self.out, ASIDE_NAME)
        for name in self._aside:
            os.rename(os.path.join(aside, name), os.path.join(self.out, name))
        self._aside = []
        if os.path.isdir(aside):
            os.rmdir(aside)
        self._unlock()
        for folder in reversed(self._created):
            try:
                os.rmdir(folder)
            except OSError:
                break  # not empty: someone else's files arrived; leave it
        self._created = []

    def close(self) -> None:
        """Release the lock (idempotent)."""
        self._unlock()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ steps
    def _make_folders(self) -> None:
        missing = missing_folders(os.path.abspath(self.out))
        os.makedirs(self.out, exist_ok=True)
        self._created = list(reversed(missing))

    def _lock(self) -> None:
        if fcntl is None:
            return
        path = os.path.join(self.out, LOCK_NAME)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                err = self._live_error(fd)
                os.close(fd)
                raise err from None
            # The run that held it may have removed the file just before: lock the one in place.
            try:
                st = os.stat(path)
                mine = os.fstat(fd)
                if (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is None:
            return
        fd, self._lock_fd = self._lock_fd, None
        try:
            os.remove(os.path.join(self.out, LOCK_NAME))  # while still held: see _lock's inode check
        except FileNotFoundError:
            pass
        os.close(fd)
        trash = os.path.join(self.out, TRASH_NAME)
        if os.path.isdir(trash):
            shutil.rmtree(trash, ignore_errors=True)

    def _recover(self) -> None:
        """Finish what a killed run left: delete a started run's trash, put back a replaced run."""
        trash = os.path.join(self.out, TRASH_NAME)
        if os.path.isdir(trash):
            shutil.rmtree(trash, ignore_errors=True)
        aside = os.path.join(self.out, ASIDE_NAME)
        if not os.path.isdir(aside):
            return
        log = os.path.join(self.out, LOG_NAME)
        if os.path.lexists(log):
            os.remove(log)  # the log of the run that was killed before its first step
        for name in os.listdir(aside):
            if not os.path.lexists(os.path.join(self.out, name)):
                os.rename(os.path.join(aside, name), os.path.join(self.out, name))
        shutil.rmtree(aside, ignore_errors=True)

    def _set_aside(self, names: Sequence[str]) -> None:
        if not names:
            return
        aside = os.path.join(self.out, ASIDE_NAME)
        os.mkdir(aside)
        for name in names:
            os.rename(os.path.join(self.out, name), os.path.join(aside, name))
            self._aside.append(name)
