"""Output paths of moetape's commands: where -o/--out points, refusing what --force may not
replace, and writing an output atomically (a temporary beside it, renamed into place)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator, List, NamedTuple, Optional

from moetape.schema.errors import LogWriteError, OutputExistsError


class OutputKind(NamedTuple):
    """What an output is, so that --force replaces only an output of its own kind."""

    noun: str
    """How messages name it: "file", "zarr store", "derived folder"."""
    marker: Optional[str]
    """None for a plain file; for a folder output, the file inside it that identifies one of its kind."""


FILE = OutputKind("file", None)
ZARR_STORE = OutputKind("zarr store", ".zgroup")


def resolve_output(path: str, default_name: str, *, kind: OutputKind = FILE) -> str:
    """Return the path an -o/--out value names for an output whose usual name is ``default_name``.

    As ``cp`` does: a value ending in "/" (a folder, created if missing) or naming an existing folder
    that is not itself an output of ``kind`` means "into that folder", under ``default_name``.
    """
    path = os.fspath(path)
    if is_kind(path, kind) and kind.marker is not None:
        return path.rstrip("/" + os.sep) or path
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        return os.path.join(path, default_name)
    return path


def is_kind(path: str, kind: OutputKind) -> bool:
    """Return True if ``path`` is an output of ``kind``: a file, or a folder (not a link) holding the marker."""
    if kind.marker is None:
        return os.path.isfile(path)
    return (
        os.path.isdir(path) and not os.path.islink(path) and os.path.isfile(os.path.join(path, kind.marker))
    )


def _is_empty_folder(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path)


def describe_path(path: str, *, limit: int = 3) -> str:
    """Say what is at ``path`` in a few words: "a file", "an empty folder", "a folder holding 2 entries (a, b)"."""
    if os.path.islink(path):
        return "a symbolic link"
    if not os.path.isdir(path):
        return "a file" if os.path.isfile(path) else "not a regular file"
    names = sorted(os.listdir(path))
    if not names:
        return "an empty folder"
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return "a folder holding {} entr{} ({})".format(len(names), "y" if len(names) == 1 else "ies", shown)


def check_output(path: str, *, force: bool, kind: OutputKind = FILE) -> None:
    """Refuse an output path that cannot be written, before any work is done.

    An existing output is replaced only with ``force``, and only by one of its own ``kind``; an empty
    folder where a folder output goes counts as absent.

    Raises:
        OutputExistsError: ``path`` exists and ``force`` is False; or it holds something of another
            kind (a folder where a file goes, a foreign folder where a zarr store goes); or a folder
            above it is a file.
    """
    path = os.fspath(path)
    if not os.path.lexists(path) or (kind.marker is not None and _is_empty_folder(path)):
        _check_parents(path)
        return
    if not force:
        raise OutputExistsError(f"{path}: exists. Choose another path or pass --force to overwrite.")
    if not is_kind(path, kind):
        raise OutputExistsError(
            f"{path}: is {describe_path(path)}, not a {kind.noun} moetape wrote; --force replaces only a "
            f"{kind.noun}. Move it away yourself or choose another path."
        )


def _check_parents(path: str) -> None:
    """Raise OutputExistsError if a folder the output goes into exists as a file."""
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.isdir(parent):
        if os.path.lexists(parent):
            shown = parent if os.path.isabs(path) else os.path.relpath(parent)
            raise OutputExistsError(
                f"{path}: cannot be written: {shown} is a file, not a folder. Choose another path."
            )
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up


def missing_folders(directory: str) -> List[str]:
    """The folders of ``directory`` that do not exist yet, innermost first."""
    missing = []
    while not os.path.isdir(directory):
        missing.append(directory)
        up = os.path.dirname(directory)
        if up == directory:
            break
        directory = up
    return missing


@contextlib.contextmanager
def atomic_output(
    path: str, *, force: bool = False, suffix: str = "", kind: OutputKind = FILE
) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    The block writes a file there, or for a folder ``kind`` a folder holding ``kind.marker``. An
    existing output is replaced (``force``) only by one of its own kind, never a foreign folder: see
    ``check_output``. Folders created for the output are removed again if the block fails.

    Raises:
        OutputExistsError: see ``check_output``.
    """
    path = os.fspath(path)
    check_output(path, force=force, kind=kind)
    directory = os.path.dirname(os.path.abspath(path))
    created = missing_folders(directory)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise LogWriteError(f"{path}: cannot create the folder {directory} ({_short(e)}).") from e
    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=suffix + ".tmp", dir=directory
    )
    os.close(fd)
    os.remove(tmp)
    done = False
    try:
        yield tmp
        _replace(tmp, path, force=force, kind=kind)
        done = True
    finally:
        if os.path.lexists(tmp):
            remove_tree(tmp)
        if not done:
            for folder in created:  # innermost first; stops at the first one something else filled
                try:
                    os.rmdir(folder)
                except OSError:
                    break


def _replace(tmp: str, path: str, *, force: bool, kind: OutputKind) -> None:
    """Rename ``tmp`` to ``path``; a folder output it replaces is moved aside first, then removed."""
    check_output(path, force=force, kind=kind)  # again: the path may have changed while we worked
    if kind.marker is None or not os.path.lexists(path):
        os.replace(tmp, path)
        return
    if _is_empty_folder(path):
        os.rmdir(path)
        os.replace(tmp, path)
        return
    old = tempfile.mkdtemp(
        prefix="." + os.path.basename(path) + ".", suffix=".old", dir=os.path.dirname(os.path.abspath(path))
    )
    os.rmdir(old)
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    remove_tree(old)


def remove_tree(path: str) -> None:
    """Remove a file or a folder moetape made (a temporary output, a replaced output), ignoring errors."""
    import shutil

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _short(e: BaseException) -> str:
    """Return the first line of an exception's message."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
