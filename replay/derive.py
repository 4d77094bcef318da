"""Derive every legacy file of a log into one folder, with a ``derived.json`` manifest.

Writes weight_stats.pkl, moe_results.pkl, logs.zarr and logs.pkl in one pass over the log
(``export.export_many``), and the optional projections whose modules are installed: summary.json
(``moetape.replay.analysis.summary``) and the plots (``moetape.replay.plots.plot_all``) on a
thread beside that pass, then video.mp4 (``moetape.replay.render.render_video``). A hook whose
module (or its optional dependency: mujoco, OpenGL, imageio-ffmpeg, matplotlib) is missing is
listed under "skipped" in the manifest.

All or nothing: every file is built in a hidden temporary folder (beside ``out_dir`` when that does
not exist yet, else inside it) and moved into place only when all of them are complete; a failure
leaves ``out_dir`` as it was. ``out_dir`` may hold other files (the default is the log's own folder):
they are never touched. ``force`` replaces the files of an earlier derive (those its derived.json
lists) and files of the same names, as a whole, but never a folder where a file goes or a folder
that is not a zarr store where logs.zarr goes.

derived.json (sorted keys, no timestamps, so deriving twice gives the same manifest):
    manifest_version    1
    moetape_version     the moetape that derived the files
    source              {"path", "log_id", "sha256" (of the log file), "format_version", "run_status",
                         "complete" (run ended cleanly), "n_steps", "n_envs"}
    parameters          {"rows" (requested), "weights", "video"}
    rows                {"mode", "n_rows", "frame_rate_hz"} of logs.zarr / logs.pkl
    files               [{"name", "sha256", "bytes"}] sorted by name; for a folder (logs.zarr) sha256 is
                        of the lines "<sha256>  <relative path>\\n" of its files, sorted by path
    skipped             [{"name", "reason"}]
    notes               messages such as a crashed log's
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import threading
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from moetape.replay.export import DEFAULT_NAMES, export_many
from moetape.replay.legacy_zarr import tree_sha256
from moetape.schema import layout
from moetape.schema.errors import OutputExistsError
from moetape.schema.io import (
    FILE,
    ZARR_STORE,
    OutputKind,
    atomic_output,
    check_output,
    remove_tree,
    sha256_file,
)
from moetape.schema.reader import Log, open_log, stale_mask

MANIFEST = "derived.json"
MANIFEST_VERSION = 1
FILES = dict(DEFAULT_NAMES)
VIDEO = "video.mp4"
SUMMARY = "summary.json"
PLOTS = ("gate_panels.png", "timeline.png")  # what plots.plot_all writes
ALL_NAMES = tuple(FILES.values()) + (MANIFEST, SUMMARY, VIDEO) + PLOTS
"""Every name derive may write into ``out_dir``: the only names --force ever replaces there."""
DERIVED_FOLDER = OutputKind("derived folder", MANIFEST)
# Hook module -> (attribute, optional third-party modules whose absence means "skip", not "bug").
HOOKS = {
    "moetape.replay.render": ("render_video", ("mujoco", "imageio", "imageio_ffmpeg", "OpenGL")),
    "moetape.replay.analysis": ("summary", ()),
    "moetape.replay.plots": ("plot_all", ("matplotlib",)),
}

Stage = Callable[[str, int, int], None]  # (stage, done, total)
Notice = Callable[[str], None]


def sha256_tree(path: str) -> str:
    """Return the sha256 of the lines "<sha256>  <relative path>\\n" of every file under ``path``, sorted by path."""
    entries = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            entries[os.path.relpath(full, path).replace(os.sep, "/")] = sha256_file(full)
    return tree_sha256(entries)


def _file_entry(out_dir: str, name: str) -> Dict[str, Any]:
    path = os.path.join(out_dir, name)
    if os.path.isdir(path):
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
        return {"name": name, "sha256": sha256_tree(path), "bytes": size}
    return {"name": name, "sha256": sha256_file(path), "bytes": os.path.getsize(path)}


def _hook(module: str, skipped: List[Dict[str, str]], name: str) -> Optional[Callable[..., Any]]:
    """Return the hook function, or None (recorded in ``skipped``) when its module or an optional dependency is missing."""
    attr, optional = HOOKS[module]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        missing = getattr(e, "name", None) or ""
        if missing == module or missing.split(".")[0] in optional:
            skipped.append({"name": name, "reason": f"{module} is not available ({_first_line(e)})"})
            return None
        raise
    fn: Callable[..., Any] = getattr(mod, attr)
    return fn


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _kind(name: str) -> Any:
    return ZARR_STORE if name == FILES["zarr"] else FILE


def _earlier_derive(out_dir: str) -> Set[str]:
    """The names an earlier derive's derived.json in ``out_dir`` lists (among ALL_NAMES), itself included."""
    try:
        with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as f:
            files = json.load(f).get("files", [])
        listed = {str(e["name"]).split("/")[0] for e in files}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return set()
    return (listed | {MANIFEST}) & set(ALL_NAMES)


def _plan_replace(out_dir: str, names: List[str], force: bool) -> Optional[Set[str]]:
    """Check ``out_dir`` before any work; return the names to replace in it (None: it does not exist).

    Raises:
        OutputExistsError: out_dir is a file; a derived name exists there and force is False; or,
            with force, something there is not of the kind derive would put in its place.
    """
    if not os.path.lexists(out_dir):
        check_output(out_dir, force=False)  # a file where a folder above it should be
        return None
    if not os.path.isdir(out_dir):
        raise OutputExistsError(f"{out_dir}: is a file; --out names a folder for the derived files.")
    present = [n for n in names if os.path.lexists(os.path.join(out_dir, n))]
    earlier = _earlier_derive(out_dir)
    if present and not force and set(present) <= earlier:
        raise OutputExistsError(
            f"{out_dir}: holds the files of an earlier derive (its {MANIFEST} lists them). Pass --force to "
            "replace them as a whole, or choose another --out."
        )
    if present and not force:
        raise OutputExistsError(
            "{}: {} exist{} already. Pass --force to replace {} or choose another --out.".format(
                out_dir,
                ", ".join(present),
                "s" if len(present) == 1 else "",
                "it" if len(present) == 1 else "them",
            )
        )
    if not force:
        return set()
    replace = {n for n in set(present) | earlier if os.path.lexists(os.path.join(out_dir, n))}
    for n in sorted(replace):
        check_output(os.path.join(out_dir, n), force=True, kind=_kind(n))
    return replace


def _commit_into(tmp: str, out_dir: str, replace: Set[str]) -> None:
    """Move the built entries of ``tmp`` into ``out_dir`` (derived.json last), the ``replace`` ones aside first."""
    new = sorted(os.listdir(tmp), key=lambda n: (n == MANIFEST, n))
    for n in new:  # something appeared meanwhile: refuse before moving anything
        if n not in replace and os.path.lexists(os.path.join(out_dir, n)):
            raise OutputExistsError(
                f"{os.path.join(out_dir, n)}: appeared while deriving; nothing was moved."
            )
    trash = tempfile.mkdtemp(prefix=".derive.", suffix=".old", dir=out_dir)
    moved: List[str] = []
    placed: List[str] = []
    try:
        for n in sorted(replace, key=lambda n: (n != MANIFEST, n)):  # the old manifest first
            if os.path.lexists(os.path.join(out_dir, n)):
                os.replace(os.path.join(out_dir, n), os.path.join(trash, n))
                moved.append(n)
        for n in new:
            os.replace(os.path.join(tmp, n), os.path.join(out_dir, n))
            placed.append(n)
    except BaseException:
        for n in placed:
            remove_tree(os.path.join(out_dir, n))
        for n in moved:
            os.replace(os.path.join(trash, n), os.path.join(out_dir, n))
        raise
    finally:
        remove_tree(trash)


class _InThread(threading.Thread):
    """Run fn(*args) beside the export pass; ``result()`` joins and returns its value or re-raises.

    Used for the sha256 of the log (hashlib releases the GIL) and for the summary and plots, which
    use the CPU while the export waits on the disk (thousands of small chunk files).
    """

    def __init__(self, name: str, fn: Callable[..., Any], *args: Any) -> None:
        super().__init__(name=name, daemon=True)
        self.fn, self.args = fn, args
        self.value: Any = None
        self.error: Optional[BaseException] = None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.fn(*self.args)
        except BaseException as e:  # noqa: BLE001 - re-raised by result()
            self.error = e

    def result(self) -> Any:
        self.join()
        if self.error is not None:
            raise self.error
        return self.value


def derive(
    log_path: str,
    out_dir: str,
    *,
    rows: str = "auto",
    weights: bool = True,
    video: bool = True,
    force: bool = False,
    progress: Optional[Stage] = None,
    notice: Optional[Notice] = None,
) -> Dict[str, Any]:
    """Write the legacy files, the optional projections and derived.json into ``out_dir``, all or nothing.

    Args:
        out_dir: the folder (created if missing); it may hold other files, which stay as they are.
        rows: rows of logs.zarr / logs.pkl ("auto", "substep", "policy", "video"; see legacy_map.py).
        weights: fill the weight stats (legacy --show_weights); False leaves them empty.
        video: render video.mp4 when the renderer is available.
        force: replace an earlier derive's files in ``out_dir`` (see the module docstring).
        progress: called as progress(stage, done, total), stage "export" (steps) or "video" (frames).
        notice: receives one-line messages for people (crashed log, skipped hooks).
    Returns:
        The manifest (as written to derived.json).
    Raises:
        OutputExistsError: a derived file exists in ``out_dir`` and force is False, or something there
            is not of the kind derive writes under its name (nothing is written).
        LogFormatError, InputError, LogReadError: see ``export.export_many`` (nothing is written).
    """
    say = notice or (lambda msg: None)
    log_path = os.fspath(log_path)
    out_dir = os.path.normpath(os.fspath(out_dir))
    names = list(FILES.values()) + [MANIFEST, SUMMARY] + list(PLOTS) + ([VIDEO] if video else [])
    replace = _plan_replace(out_dir, names, force)
    with open_log(log_path) as log:
        notes = _status_notes(log) + _stale_notes(log)
        for note in notes:
            say(note)

        def build(tmp: str) -> Dict[str, Any]:
            return _build(
                log,
                log_path,
                tmp,
                rows=rows,
                weights=weights,
                video=video,
                progress=progress,
                notes=notes,
                say=say,
            )

        if replace is None:  # a new folder: built beside it, renamed as a whole
            with atomic_output(out_dir, kind=DERIVED_FOLDER, suffix=".derive") as tmp:
                os.mkdir(tmp)
                manifest = build(tmp)
            return manifest
        tmp = tempfile.mkdtemp(prefix=".derive.", suffix=".tmp", dir=out_dir)
        try:
            manifest = build(tmp)
            _commit_into(tmp, out_dir, replace)
        finally:
            remove_tree(tmp)
    return manifest


def _build(
    log: Log,
    log_path: str,
    out_dir: str,
    *,
    rows: str,
    weights: bool,
    video: bool,
    progress: Optional[Stage],
    notes: List[str],
    say: Notice,
) -> Dict[str, Any]:
    """Write every derived file into the empty folder ``out_dir``, derived.json last; return the manifest."""
    hasher = _InThread("moetape-sha256", sha256_file, log_path)
    analysis = _InThread("moetape-analysis", _analysis_hooks, log_path, out_dir, False)
    outputs = {kind: os.path.join(out_dir, name) for kind, name in FILES.items()}
    on_step = (lambda done: progress("export", done, log.n_steps)) if progress else None
    try:
        result = export_many(log, outputs, rows=rows, weights=weights, progress=on_step)
    except BaseException:
        analysis.join()  # it writes into out_dir: let it finish before the folder is removed
        raise
    entries = [
        {"name": FILES[kind], "sha256": r["sha256"], "bytes": r["bytes"]} for kind, r in result.items()
    ]
    skipped: List[Dict[str, str]] = []
    try:
        written = _video_hook(
            log, log_path, out_dir, video=video, force=False, progress=progress, skipped=skipped
        )
    except BaseException:
        analysis.join()
        raise
    more_written, more_skipped = analysis.result()
    written += more_written
    skipped += more_skipped
    for item in skipped:
        if item["reason"] != "--no-video":
            say("skipped {}: {}".format(item["name"], item["reason"]))
    zarr_info = result["zarr"]
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "moetape_version": _version(),
        "source": {
            "path": log_path,
            "log_id": log.log_id,
            "sha256": hasher.result(),
            "format_version": log.format_version,
            "run_status": log.run_status,
            "complete": log.run_status == layout.STATUS_CLEAN,
            "n_steps": log.n_steps,
            "n_envs": log.n_envs,
        },
        "parameters": {"rows": rows, "weights": weights, "video": video},
        "rows": {
            "mode": zarr_info["rows"],
            "n_rows": zarr_info["n_rows"],
            "frame_rate_hz": zarr_info["frame_rate_hz"],
        },
        "files": sorted(entries + [_file_entry(out_dir, n) for n in written], key=lambda d: d["name"]),
        "skipped": skipped,
        "notes": notes,
    }
    with atomic_output(os.path.join(out_dir, MANIFEST)) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _status_notes(log: Log) -> List[str]:
    if log.run_status == layout.STATUS_CLEAN:
        return []
    if log.run_status == layout.STATUS_RUNNING:
        what = "is still being recorded or the recorder crashed"
    else:
        what = f"ended {log.run_status}"
    return [
        f"{log.path}: run status '{log.run_status}': the run {what}; derived the {log.n_steps} committed steps."
    ]


def _stale_notes(log: Log) -> List[str]:
    """One note when the log marks stale rows: how many, and that the legacy files keep them."""
    if not log.stale_after_reset:
        return []
    per = max(1, (8 << 20) // (8 * log.n_envs))  # two int32 fields a step: about 8 MB a read
    n = sum(int(stale_mask(log, a, a + per).sum()) for a in range(0, log.n_steps, per))
    return [
        f"{log.path}: {n} env-steps are a new episode's first step after an automatic reset, whose "
        f"{', '.join(log.stale_after_reset)} (frames/: row 0 of the step) hold the previous episode's last "
        "values (the log's stale_after_reset); the legacy files keep them as the legacy scripts wrote them."
    ]


def _video_hook(
    log: Log,
    log_path: str,
    out_dir: str,
    *,
    video: bool,
    force: bool,
    progress: Optional[Stage],
    skipped: List[Dict[str, str]],
) -> List[str]:
    """Render video.mp4 when asked and possible; return the names written (relative to out_dir)."""
    if not video:
        skipped.append({"name": VIDEO, "reason": "--no-video"})
        return []
    if log.n_steps == 0:
        skipped.append({"name": VIDEO, "reason": "the log has no committed steps"})
        return []
    render = _hook("moetape.replay.render", skipped, VIDEO)
    if render is None:
        return []
    on_frame = (lambda done, total: progress("video", done, total)) if progress else None
    render_error = getattr(sys.modules["moetape.replay.render"], "RenderError", ())
    try:
        render(log_path, os.path.join(out_dir, VIDEO), force=force, progress=on_frame)
    except render_error as e:  # no mujoco / no OpenGL on this machine: skip and say why
        skipped.append({"name": VIDEO, "reason": _first_line(e)})
        return []
    return [VIDEO]


def _analysis_hooks(log_path: str, out_dir: str, force: bool) -> Tuple[List[str], List[Dict[str, str]]]:
    """Write summary.json and the plots from a reader of their own; return (names written, skipped)."""
    written: List[str] = []
    skipped: List[Dict[str, str]] = []
    with open_log(log_path) as log:
        summary = _hook("moetape.replay.analysis", skipped, SUMMARY)
        if summary is not None:
            with atomic_output(os.path.join(out_dir, SUMMARY), force=force) as tmp:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(json.dumps(summary(log), indent=2, sort_keys=True, default=str) + "\n")
            written.append(SUMMARY)
        if log.n_steps == 0:
            skipped.append({"name": "plots", "reason": "the log has no committed steps"})
        else:
            plot_all = _hook("moetape.replay.plots", skipped, "plots")
            if plot_all is not None:
                for path in plot_all(log, out_dir, force=force):
                    written.append(os.path.relpath(path, out_dir).replace(os.sep, "/"))
    return written, skipped


def _version() -> str:
    from moetape import __version__

    return __version__
