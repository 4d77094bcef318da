"""Read event logs: complete, crashed and still-being-written ones, streaming with bounded memory.

Readers trust ``n_committed``, never dataset lengths. Fields are named as in the layout without
the group for steps/ ("obs", "terms/task_reaching_pos_err", "metrics/x") and with it for frames/
("frames/root_pos").

The metadata properties of ``Log`` live in schema/log_meta.py; ``stale_mask`` and ``fresh_rows`` in
schema/stale.py (re-exported here).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Union

import numpy as np

from moetape.schema import layout
from moetape.schema.errors import LogError, LogFormatError, LogReadError, NewerFormatError
from moetape.schema.io import H5_ERRORS, open_for_read, read_dataset
from moetape.schema.log_meta import LogMetadata, _first_line
from moetape.schema.stale import fresh_rows, stale_mask  # noqa: F401 - re-exported for callers
from moetape.schema.upcast import upcast
from moetape.schema.version import FORMAT_VERSION, OLDEST_READABLE

STREAM_BYTES = 8 * 1024 * 1024
EnvSel = Union[None, int, slice, Sequence[int]]


@dataclass
class Chunk:
    """Rows of policy steps [start, stop) for the requested fields.

    data: field -> array; steps/ fields (stop-start, E, ...), frames/ fields
    ((stop-start) * frames_per_step, E, ...); the env axis is dropped when one env was selected.
    """

    start: int
    stop: int
    data: Dict[str, np.ndarray]


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return [_decode(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


class Log(LogMetadata):
    """An open event log. Use ``open_log(path)``; close it or use it as a context manager."""

    def __init__(
        self,
        path: str,
        *,
        check_length: bool = True,
        swmr: Optional[bool] = None,
        tolerant: bool = False,
        allow_missing: bool = False,
    ) -> None:
        """Open ``path``; see ``open_log``.

        Args:
            swmr: passed to io.open_for_read (None: SWMR only while a writer holds the file or was killed).
            tolerant: for verify and salvage: a dataset whose object header cannot be read is listed in
                ``unreadable`` instead of refusing the log, and the truncation check of every
                dataset's last chunk is left to the reads (check_length=False skips the file's too).
            allow_missing: with ``tolerant``, a dataset absent from its group (deleted, or its link name
                damaged) is listed in ``unreadable`` too, instead of refusing the log (salvage).
        """
        self.path = os.fspath(path)
        self.recovered: Set[str] = set()  # datasets whose torn last chunk was read without its checksum
        self.unreadable: Dict[str, str] = {}  # tolerant: HDF5 path -> why the dataset cannot be opened
        self._tolerant = tolerant
        self._allow_missing = allow_missing
        self._ds: Dict[str, Any] = {}
        self._f = self._open(check_length=check_length, swmr=swmr)
        if swmr is None and not self._f.swmr_mode and self.run_status == layout.STATUS_RUNNING:
            # Closed by its writer but still "running": a writer process may be about to reopen it
            # for appending (or was killed after closing it); follow it as a SWMR reader.
            self._f.close()
            self._f = self._open(check_length=False, swmr=True)

    def _open(self, *, check_length: bool, swmr: Optional[bool]) -> Any:
        f = open_for_read(self.path, check_length=check_length, swmr=swmr)
        self._f = f
        try:
            self._load()
        except LogError:
            f.close()
            raise
        except H5_ERRORS as e:
            f.close()
            raise LogReadError(
                f"{self.path}: the log's metadata is damaged ({_first_line(e)}). Restore a copy; "
                "`moetape salvage` recovers what is still readable."
            ) from e
        except BaseException:
            f.close()
            raise
        return f

    # ------------------------------------------------------------------ opening
    def _load(self) -> None:
        f, p = self._f, self.path
        if layout.FORMAT_VERSION_ATTR not in f.attrs:
            raise LogFormatError(
                f"{p}: HDF5 file without a 'format_version' attribute: not a moetape log. "
                "Pass a log written by `moetape record`."
            )
        version = int(f.attrs[layout.FORMAT_VERSION_ATTR])
        if version > FORMAT_VERSION:
            raise NewerFormatError(
                f"{p}: format_version {version} is newer than this moetape reads ({OLDEST_READABLE}-{FORMAT_VERSION}). "
                "Upgrade: pip install -U moetape"
            )
        if version < OLDEST_READABLE:
            raise LogFormatError(
                f"{p}: format_version {version} is older than any moetape release reads ({OLDEST_READABLE}-{FORMAT_VERSION})."
            )
        self.format_version = version
        missing = [a for a in layout.META_ATTRS if a not in f.attrs]
        if missing:
            raise LogFormatError(
                f"{p}: missing root attributes {missing}; expected a complete moetape log. "
                "Run `moetape verify` for details."
            )
        meta = {k: _decode(f.attrs[k]) for k in f.attrs}
        self.meta, _ = upcast(meta, {}, version)
        for name in (layout.N_COMMITTED, layout.RUN_STATUS):
            if name not in f:
                raise LogFormatError(f"{p}: dataset '{name}' missing; expected a complete moetape log.")
        self._paths = self._field_paths()
        self._ds = {}
        absent: List[str] = []
        for fp in self._paths.values():
            try:
                self._ds[fp] = f[fp]
            except H5_ERRORS as e:
                if isinstance(e, KeyError) and "doesn't exist" in str(e):
                    absent.append(fp)
                elif self._tolerant:
                    self.unreadable[fp] = f"object header or group index damaged ({_first_line(e)})"
                else:
                    raise LogReadError(
                        f"{p}: {fp}: cannot open the dataset ({_first_line(e)}); its object header or "
                        "the group index is damaged. `moetape verify` lists every damaged part; "
                        "`moetape salvage` keeps the other fields."
                    ) from e
        if absent and self._allow_missing:
            self.unreadable.update({fp: "missing" for fp in absent})
        elif absent:
            raise LogFormatError(
                "{}: {} dataset(s) missing: {}. The file is damaged or not written by "
                "moetape; run `moetape verify`.".format(p, len(absent), ", ".join(absent[:5]))
            )
        self.refresh()
        if not self._tolerant:
            self._check_extent()

    def _check_extent(self) -> None:
        """Refuse a truncated file: the chunk holding each dataset's last committed row must lie inside it."""
        size = os.path.getsize(self.path)
        for fp, ds in self._ds.items():
            n = self.n_frames if layout.stream_of(fp) else self.n_steps
            if n == 0 or ds.chunks is None:
                continue
            coord = tuple(
                ((n - 1) // ds.chunks[0]) * ds.chunks[0]
                if i == 0
                else ((ds.shape[i] - 1) // ds.chunks[i]) * ds.chunks[i]
                for i in range(ds.ndim)
            )
            try:
                info = ds.id.get_chunk_info_by_coord(coord)
            except (OSError, ValueError, RuntimeError) as e:
                raise LogReadError(
                    f"{self.path}: cannot locate the data of {fp} ({e}); the file may be truncated or "
                    "corrupt. Run `moetape verify`."
                ) from e
            if info.byte_offset is not None and info.byte_offset + info.size > size:
                raise LogReadError(
                    f"{self.path}: file is truncated: {fp} needs {info.byte_offset + info.size} bytes but the file has {size}. Restore a complete "
                    "copy: the rows past the end of the file are lost."
                )

    def _field_paths(self) -> Dict[str, str]:
        names: Dict[str, str] = {}
        for name in layout.STEP_FIELDS:
            names[name] = layout.step_path(name)
        for name in self.term_names:
            names["terms/" + name] = layout.TERMS + "/" + name
        for name in self.metric_names:
            names["metrics/" + name] = layout.METRICS + "/" + name
        for name in layout.FRAME_FIELDS:
            names["frames/" + name] = layout.frame_path(name)
        return names

    def refresh(self) -> None:
        """Re-read the commit counter and run status (a writer may still be appending)."""
        f = self._f
        for name in (layout.N_COMMITTED, layout.RUN_STATUS, layout.END_TIME):
            if f.swmr_mode and name in f:
                f[name].refresh()
        counts = read_dataset(f[layout.N_COMMITTED], (), self.path)
        self.n_steps = int(counts[0])
        self.n_frames = int(counts[1])
        self.run_status = _decode(f[layout.RUN_STATUS][()]).strip("\x00 ")
        self.end_time_utc = _decode(f[layout.END_TIME][()]).strip("\x00 ") if layout.END_TIME in f else ""
        for fp, ds in list(self._ds.items()):
            try:
                if f.swmr_mode:
                    ds.refresh()
                rows = ds.shape[0]
            except H5_ERRORS as e:
                if not self._tolerant:
                    raise LogReadError(
                        f"{self.path}: {fp}: cannot read the dataset's extent ({_first_line(e)}); its object "
                        "header is damaged. `moetape salvage` keeps the other fields."
                    ) from e
                self.unreadable[fp] = f"object header damaged ({_first_line(e)})"
                del self._ds[fp]
                continue
            n = self.n_frames if layout.stream_of(fp) else self.n_steps
            if rows < n:
                if self._tolerant:
                    self.unreadable[fp] = f"{rows} rows but n_committed says {n}"
                    del self._ds[fp]
                    continue
                raise LogFormatError(
                    f"{self.path}: n_committed says {n} rows but {fp} has {rows}; the file is damaged. "
                    "Run `moetape verify` for details."
                )

    def fields(self) -> List[str]:
        """Return every field name (tolerant: only those whose dataset could be opened)."""
        return [name for name, fp in self._paths.items() if fp in self._ds]

    def field_path(self, field: str) -> str:
        """Return the HDF5 path of ``field`` ("obs" -> "steps/obs")."""
        return self._path(field)

    def has_field(self, name: str) -> bool:
        return name in self._paths

    # ------------------------------------------------------------------ data
    def _path(self, field: str) -> str:
        try:
            return self._paths[field]
        except KeyError:
            raise LogFormatError(
                "{}: no field '{}'; fields are: {}".format(self.path, field, ", ".join(self._paths))
            ) from None

    def _env_index(self, env: EnvSel) -> Any:
        if env is None:
            return slice(None)
        if isinstance(env, slice):
            return env
        if isinstance(env, (int, np.integer)):
            if not 0 <= int(env) < self.n_envs:
                raise LogFormatError(
                    f"{self.path}: env {env} out of range; the log has {self.n_envs} envs (0-{self.n_envs - 1})."
                )
            return int(env)
        idx = [int(i) for i in env]
        bad = [i for i in idx if not 0 <= i < self.n_envs]
        if bad:
            raise LogFormatError(f"{self.path}: envs {bad} out of range; the log has {self.n_envs} envs.")
        return idx

    def read(
        self, field: str, start: int = 0, stop: Optional[int] = None, *, env: EnvSel = None
    ) -> np.ndarray:
        """Read policy steps [start, stop) of ``field`` (frames/ fields: those steps' frame rows).

        Returns:
            steps/ fields (n, E, ...), frames/ fields (n * frames_per_step, E, ...); without the env
            axis when ``env`` is an int. ``t_wall_s``, frames/step and frames/substep have no env axis.
        """
        path = self._path(field)
        stop = self.n_steps if stop is None else min(int(stop), self.n_steps)
        start = max(0, min(int(start), stop))
        if layout.stream_of(path):
            fps = self.frames_per_step
            rows = slice(start * fps, stop * fps)
        else:
            rows = slice(start, stop)
        ds = self._dataset_at(path)
        env_sel = self._env_index(env) if ds.ndim > 1 else None
        try:
            if ds.ndim == 1:
                out = read_dataset(ds, rows, self.path)
            elif isinstance(env_sel, list):
                out = read_dataset(ds, rows, self.path)[:, env_sel]
            else:
                out = read_dataset(ds, (rows, env_sel), self.path)
        except LogReadError:
            if self.ended_cleanly:
                raise
            out = self._read_torn_tail(ds, path, rows)
            if env_sel is not None:
                out = out[:, env_sel]
        values = {field: out}
        if self.format_version != FORMAT_VERSION:
            _, values = upcast(dict(self.meta), values, self.format_version)
        return np.asarray(values[field])

    def _read_torn_tail(self, ds: Any, path: str, rows: slice) -> np.ndarray:
        """Read ``rows`` of a run that did not end cleanly whose last chunk fails its checksum.

        When a SIGKILL lands while the writer rewrites the partly filled last chunk of a dataset
        (it holds committed rows plus the new ones), the chunk's bytes can be a mix of old and new
        content: the committed rows' bytes are the same in both, but the chunk's fletcher32 no
        longer matches. Only that last chunk (per env block) is read raw, without the checksum;
        a checksum failure anywhere else is corruption and is raised.
        """
        n = self.n_frames if layout.stream_of(path) else self.n_steps
        cr = ds.chunks[0]
        tail = ((n - 1) // cr) * cr if n else 0
        start, stop = rows.start, rows.stop
        parts = []
        if start < min(stop, tail):
            parts.append(read_dataset(ds, slice(start, min(stop, tail)), self.path))
        if stop > tail:
            band = np.empty((cr,) + ds.shape[1:], dtype=ds.dtype)
            count = int(np.prod(ds.chunks, dtype=np.int64))
            for offset in np.ndindex(*[-(-ds.shape[i] // ds.chunks[i]) for i in range(1, ds.ndim)]):
                origin = (tail,) + tuple(o * c for o, c in zip(offset, ds.chunks[1:]))
                try:
                    _mask, raw = ds.id.read_direct_chunk(origin)
                except (OSError, ValueError, RuntimeError) as e:
                    raise LogReadError(f"{self.path}: {path}: last chunk unreadable ({e}).") from e
                block = np.frombuffer(raw, dtype=ds.dtype, count=count).reshape(ds.chunks)
                dst = tuple(
                    slice(o, min(o + c, size)) for o, c, size in zip(origin[1:], ds.chunks[1:], ds.shape[1:])
                )
                band[(slice(None),) + dst] = block[
                    (slice(None),) + tuple(slice(0, d.stop - d.start) for d in dst)
                ]
            parts.append(band[max(start, tail) - tail : stop - tail])
            self.recovered.add(path)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def step_bytes(self, fields: Sequence[str]) -> int:
        """Return the bytes one policy step of ``fields`` takes (all envs)."""
        total = 0
        for name in fields:
            ds = self._dataset_at(self._path(name))
            rows = self.frames_per_step if layout.stream_of(ds.name.lstrip("/")) else 1
            total += int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize * rows
        return max(1, total)

    def iter_chunks(
        self,
        fields: Sequence[str],
        *,
        start: int = 0,
        stop: Optional[int] = None,
        env: EnvSel = None,
        chunk_steps: Optional[int] = None,
    ) -> Iterator[Chunk]:
        """Yield the committed steps [start, stop) in chunks of about 8 MB (memory stays bounded)."""
        fields = list(fields)
        for name in fields:
            self._path(name)
        stop = self.n_steps if stop is None else min(int(stop), self.n_steps)
        per = chunk_steps or max(1, STREAM_BYTES // self.step_bytes(fields))
        s = max(0, int(start))
        while s < stop:
            e = min(stop, s + per)
            yield Chunk(s, e, {name: self.read(name, s, e, env=env) for name in fields})
            s = e

    def follow(
        self,
        fields: Sequence[str],
        *,
        start: int = 0,
        poll_s: float = 0.25,
        idle_timeout_s: Optional[float] = None,
        env: EnvSel = None,
    ) -> Iterator[Chunk]:
        """Yield steps as the writer commits them, until the run ends (or no new step for idle_timeout_s)."""
        s = start
        last_new = time.monotonic()
        while True:
            self.refresh()
            if self.n_steps > s:
                yield from self.iter_chunks(fields, start=s, stop=self.n_steps, env=env)
                s = self.n_steps
                last_new = time.monotonic()
                continue
            if self.run_status != layout.STATUS_RUNNING:
                return
            if idle_timeout_s is not None and time.monotonic() - last_new > idle_timeout_s:
                return
            time.sleep(poll_s)

    def dataset(self, field: str) -> Any:
        """Return the raw h5py dataset of ``field`` (for verify and tools; mind n_committed)."""
        return self._dataset_at(self._path(field))

    def _dataset_at(self, path: str) -> Any:
        try:
            return self._ds[path]
        except KeyError:
            raise LogReadError(
                f"{self.path}: {path}: {self.unreadable.get(path, 'not opened')}; this field cannot be read."
            ) from None

    @property
    def h5(self) -> Any:
        """The underlying read-only h5py.File."""
        return self._f

    def info(self) -> Dict[str, Any]:
        """Return a JSON-ready summary: provenance, sizes, rates, status, file size."""
        prov = self.provenance
        return {
            "path": self.path,
            "format_version": self.format_version,
            "log_id": self.log_id,
            "moetape_version": self.meta.get("moetape_version"),
            "created_utc": self.meta.get("created_utc"),
            "end_time_utc": self.end_time_utc or None,
            "run_status": self.run_status,
            "ended_cleanly": self.ended_cleanly,
            "backend": self.meta.get("backend"),
            "n_steps": self.n_steps,
            "n_frames": self.n_frames,
            "n_envs": self.n_envs,
            "env_steps": self.n_steps * self.n_envs,
            "obs_dim": int(self.meta["obs_dim"]),
            "action_dim": int(self.meta["action_dim"]),
            "expert_names": self.expert_names,
            "joint_names": self.joint_names,
            "n_bodies": len(self.body_names),
            "term_names": self.term_names,
            "metric_names": self.metric_names,
            "sim_dt_s": self.sim_dt_s,
            "decimation": self.decimation,
            "policy_dt_s": self.policy_dt_s,
            "frames_per_step": self.frames_per_step,
            "frame_rate_hz": self.frame_rate_hz,
            "duration_s": self.n_steps * self.policy_dt_s,
            "has_model": self.has_model,
            "stale_after_reset": self.stale_after_reset,
            "command_line": self.meta.get("command_line"),
            "provenance": prov,
            "size_bytes": os.path.getsize(self.path),
        }

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_log(path: str) -> Log:
    """Open a moetape log for reading.

    Raises:
        LogReadError: missing, not HDF5, truncated or unreadable.
        LogFormatError: HDF5 but not a (complete) moetape log, or a counter larger than the data.
        NewerFormatError: written by a newer moetape.
    """
    return Log(path)
