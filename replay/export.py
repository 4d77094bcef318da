"""Derive the legacy files from an event log, streaming: weight_stats.pkl, moe_results.pkl, logs.zarr, logs.pkl.

The log is read once, in chunks of about 32 MB of policy steps, and every requested output is fed
from the same pass (``export_many``). logs.zarr is written chunk by chunk (memory stays bounded);
the pickles are in-memory lists by nature (the legacy format), kept as blocks of rows until written.
Every output goes to a temporary name and is renamed into place when complete.

What each output holds, key by key, and where it comes from: moetape.replay.legacy_map.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from moetape.replay.legacy_map import (
    ACTION_KEYS,
    ENV0_FIELDS,
    NEEDS,
    STATE0_FIELDS,
    STATE_KEYS,
    TASK_KEYS,
    WEIGHT_KEYS,
    ChunkView,
    RowPlan,
    episode_keys,
    plan_rows,
    zarr_name,
)
from moetape.replay.legacy_pickle import RowList, write_pickle
from moetape.replay.legacy_zarr import ZarrV2Writer
from moetape.schema.errors import InputError, LogFormatError
from moetape.schema.io import FILE, ZARR_STORE, OutputKind, atomic_output, check_output, resolve_output
from moetape.schema.reader import Log, open_log

Progress = Callable[[int], None]
StepsArg = Optional[Tuple[Optional[int], Optional[int]]]
LogArg = Union[Log, str, "os.PathLike[str]"]

KINDS = ("weight_stats", "results", "zarr", "pkl")
DEFAULT_NAMES = {
    "weight_stats": "weight_stats.pkl",
    "results": "moe_results.pkl",
    "zarr": "logs.zarr",
    "pkl": "logs.pkl",
}
"""The legacy file name of each output: what an -o naming a folder writes into it."""


def output_kind(kind: str) -> OutputKind:
    """Return what an output of export ``kind`` is on disk (a file, or a zarr store)."""
    return ZARR_STORE if kind == "zarr" else FILE


def resolve_outputs(outputs: Mapping[str, str]) -> Dict[str, str]:
    """Resolve each -o value (kind -> path): a folder, or a path ending in "/", gets the legacy file name."""
    return {
        kind: resolve_output(path, DEFAULT_NAMES[kind], kind=output_kind(kind))
        for kind, path in outputs.items()
    }


CHUNK_BYTES = 8 << 20  # log bytes read per pass step: bounds memory, large enough for fast reads

# ------------------------------------------------------------------------------------ outputs


def _weight_lists(enabled: bool) -> Dict[str, RowList]:
    return (
        {k: RowList(as_float=True) for k in WEIGHT_KEYS} if enabled else {k: RowList() for k in WEIGHT_KEYS}
    )


class _WeightStats:
    def __init__(self, log: Log, tmp: str, *, weights: bool = True) -> None:
        self.tmp, self.enabled = tmp, weights
        self.lists = _weight_lists(weights)

    def feed(self, v: ChunkView) -> None:
        if self.enabled:
            for key, values in v.weights().items():
                self.lists[key].append_block(values)

    def close(self) -> Dict[str, Any]:
        return write_pickle(self.lists, self.tmp)

    def abort(self) -> None:
        """Drop what was gathered (the temporary output is removed by atomic_output)."""


class _Results(_WeightStats):
    def __init__(self, log: Log, tmp: str, *, weights: bool = True) -> None:
        super().__init__(log, tmp, weights=weights)
        self.config = log.config
        self.actions, self.moe_weights = RowList(), RowList()
        self.state = {"root_pos": RowList(), "root_quat": RowList(), "dof_pos": RowList()}

    def feed(self, v: ChunkView) -> None:
        super().feed(v)
        self.actions.append_block(v.step("action"))
        if self.enabled:
            self.moe_weights.append_block(v.step("gate"))
        for key, field in zip(self.state, STATE0_FIELDS):
            self.state[key].append_block(v.state0(field))

    def close(self) -> Dict[str, Any]:
        return write_pickle(
            {
                "config": self.config,
                "weight_stats": self.lists,
                "action_logs": {"actions": self.actions, "moe_weights": self.moe_weights},
                "state_logs": self.state,
            },
            self.tmp,
        )


class _Pkl(_WeightStats):
    def __init__(self, log: Log, tmp: str, *, weights: bool = True) -> None:
        super().__init__(log, tmp, weights=weights)
        self.config = log.config
        self.episode_keys = episode_keys(log)
        self.groups: Dict[str, Dict[str, RowList]] = {
            "state_logs": {k: RowList() for k in STATE_KEYS},
            "action_logs": {k: RowList() for k in ACTION_KEYS},
            "episode_logs": {k: RowList() for k, _ in self.episode_keys},
            "task_logs": {k: RowList() for k in TASK_KEYS},
        }

    def feed(self, v: ChunkView) -> None:
        super().feed(v)
        rows = v.rows()
        for group in ("state_logs", "action_logs", "task_logs"):
            for key, lst in self.groups[group].items():
                lst.append_block(rows[key])
        for key, field in self.episode_keys:
            self.groups["episode_logs"][key].append_block(v.step(field))

    def close(self) -> Dict[str, Any]:
        return write_pickle(dict({"config": self.config}, **self.groups, weight_stats=self.lists), self.tmp)


class _Zarr:
    def __init__(self, log: Log, tmp: str, plan: RowPlan, sel: Selection, *, weights: bool = True) -> None:
        self.enabled = weights
        self.episode_keys = episode_keys(log)
        self.attrs: Dict[str, Any] = {
            "sim_dt_s": log.sim_dt_s,
            "decimation": log.decimation,
            "policy_dt_s": log.policy_dt_s,
            "frame_rate_hz": plan.frame_rate_hz,
            "rows": plan.mode,
            "source_log_id": log.log_id,
        }
        if sel.given:
            self.attrs.update(steps=[sel.start, sel.stop], env=sel.env)
        e, s, n = sel.n_envs(log), sel.n_steps, plan.n_rows
        j, b = len(log.joint_names), len(log.body_names)
        a, o = int(log.meta["action_dim"]), int(log.meta["obs_dim"])
        shapes = {
            "root_state": (n, e, 13),
            "root_pos": (n, e, 3),
            "root_xyzw_quat": (n, e, 4),
            "root_lin_vel": (n, e, 3),
            "root_ang_vel": (n, e, 3),
            "rigid_body_pos": (n, e, b, 3),
            "rigid_body_xyzw_quat": (n, e, b, 4),
            "dof_pos": (n, e, j),
            "dof_vel": (n, e, j),
            "contact_forces": (n, e, b, 3),
            "episode_time": (n, e),
            "torque": (n, e, j),
            "action": (n, e, a),
            "obs": (n, e, o),
            "target_positions": (n, 8, 3),
            "target_quats_wxyz": (n, 8, 4),
        }
        self.w = ZarrV2Writer(tmp)
        for key, shape in shapes.items():
            self.w.create(key, shape, "float32")
        for key, field in self.episode_keys:
            self.w.create(zarr_name(key), (s, e), "bool" if field == "timeout" else "float32")
        for key in WEIGHT_KEYS:
            self.w.create(key, (s if weights else 0,), "float64")
        self.frame_keys = list(shapes)

    def feed(self, v: ChunkView) -> None:
        rows = v.rows()
        for key in self.frame_keys:
            self.w.append(key, rows[key])
        for key, field in self.episode_keys:
            self.w.append(zarr_name(key), v.step(field))
        if self.enabled:
            for key, values in v.weights().items():
                self.w.append(key, values)

    def close(self) -> Dict[str, Any]:
        self.w.close(attrs=self.attrs)
        return self.w.tree_digest()

    def abort(self) -> None:
        self.w.abort()


# ------------------------------------------------------------------------------------ entry points


@dataclass(frozen=True)
class Selection:
    """The policy steps [start, stop) and the env (None: all) an export covers."""

    start: int
    stop: int
    env: Optional[int]
    given: bool
    """True when --steps or --env was asked for (logs.zarr then records them as attributes)."""

    @property
    def n_steps(self) -> int:
        return self.stop - self.start

    def n_envs(self, log: Log) -> int:
        return log.n_envs if self.env is None else 1

    def env_sel(self) -> Optional[slice]:
        """The reader's env selection: a one-env slice keeps the env axis (E = 1)."""
        return None if self.env is None else slice(self.env, self.env + 1)


def select(log: Log, steps: StepsArg = None, env: Optional[int] = None) -> Selection:
    """Check ``steps`` ((A, B), either may be None) and ``env`` against the log; return the Selection.

    Raises:
        InputError: an empty or out-of-range step range, or an env the log does not have.
    """
    if env is not None and not 0 <= int(env) < log.n_envs:
        raise InputError(
            f"{log.path}: --env {env} out of range; the log has {log.n_envs} env(s) (0-{log.n_envs - 1})."
        )
    if steps is None or tuple(steps) == (None, None):
        start, stop = 0, log.n_steps
    else:
        from moetape.replay.analysis import step_range

        start, stop = step_range(log, steps[0], steps[1])
    return Selection(start, stop, None if env is None else int(env), steps is not None or env is not None)


def _open(log: LogArg) -> Tuple[Log, bool]:
    if isinstance(log, Log):
        return log, False
    return open_log(os.fspath(log)), True


def check_fields(log: Log, kinds: Sequence[str], *, weights: bool = True) -> None:
    """Raise LogFormatError naming every field the requested exports need and the log lacks."""
    for kind in kinds:
        missing = [f for f in NEEDS[kind] if not log.has_field(f)]
        if missing:
            raise LogFormatError(
                "{}: cannot export {}: the log has no {}.".format(log.path, kind, ", ".join(missing))
            )
    if weights and len(log.expert_names) < 2:
        raise LogFormatError(
            "{}: the legacy weight stats need 2 experts (base, arm); the log has {} ({}).".format(
                log.path, len(log.expert_names), ", ".join(log.expert_names)
            )
        )


def export_many(
    log: LogArg,
    outputs: Mapping[str, str],
    *,
    rows: str = "auto",
    weights: bool = True,
    force: bool = False,
    progress: Optional[Progress] = None,
    chunk_steps: Optional[int] = None,
    steps: StepsArg = None,
    env: Optional[int] = None,
) -> Dict[str, Dict[str, Any]]:
    """Write several legacy files in one pass over the log.

    Args:
        outputs: kind ("weight_stats", "results", "zarr", "pkl") -> output path; a folder (or a path
            ending in "/") means that folder, under the legacy name (``DEFAULT_NAMES``).
        rows: frame rows of zarr/pkl: "auto", "substep", "policy" or "video" (see moetape.replay.legacy_map).
        weights: fill the weight-stats lists (the legacy --show_weights); False leaves them empty.
        progress: called with the number of policy steps done so far (of the selection).
        steps: policy steps (A, B), half-open, either end None; default every committed step.
        env: export this env only (E = 1, in env 0's place: see moetape.replay.legacy_map); default all.
    Returns:
        kind -> {"path", "n_steps", "n_rows", "rows", "frame_rate_hz", "run_status", "sha256", "bytes",
        "steps" ([A, B]), "env"} (a folder's sha256 as ``legacy_zarr.tree_sha256``; computed while writing).
    Raises:
        InputError: unknown kind, rows mode, steps or env. LogFormatError: the log lacks a needed field.
        OutputExistsError: an output exists and force is False, or it is not an output of the same
            kind (checked before anything is written; --force never replaces a foreign folder).
    """
    bad = [k for k in outputs if k not in KINDS]
    if bad:
        raise InputError("unknown export {}; expected {}.".format(", ".join(bad), ", ".join(KINDS)))
    outputs = resolve_outputs(outputs)
    for kind, path in outputs.items():
        check_output(path, force=force, kind=output_kind(kind))
    lg, owned = _open(log)
    try:
        check_fields(lg, list(outputs), weights=weights)
        sel = select(lg, steps, env)
        plan = (
            plan_rows(lg, rows, start=sel.start, stop=sel.stop)
            if ("zarr" in outputs or "pkl" in outputs)
            else None
        )
        fields = {f for k in outputs for f in NEEDS[k]} - set(ENV0_FIELDS) - {"reward", "timeout"}
        if plan is not None:
            fields |= {f for _, f in episode_keys(lg)}
        digests: Dict[str, Dict[str, Any]] = {}
        with contextlib.ExitStack() as stack:
            sinks: Dict[str, Any] = {}
            try:
                for kind, path in outputs.items():
                    tmp = stack.enter_context(
                        atomic_output(
                            path,
                            force=force,
                            suffix=".zarr" if kind == "zarr" else "",
                            kind=output_kind(kind),
                        )
                    )
                    if kind == "zarr":
                        assert plan is not None
                        sinks[kind] = _Zarr(lg, tmp, plan, sel, weights=weights)
                    else:
                        cls = {"weight_stats": _WeightStats, "results": _Results, "pkl": _Pkl}[kind]
                        sinks[kind] = cls(lg, tmp, weights=weights)
                per = chunk_steps or max(1, CHUNK_BYTES // lg.step_bytes(sorted(fields)))
                chunks = lg.iter_chunks(
                    sorted(fields), start=sel.start, stop=sel.stop, env=sel.env_sel(), chunk_steps=per
                )
                for chunk in chunks:
                    view = ChunkView(lg, chunk, plan, env=sel.env or 0)
                    for sink in sinks.values():
                        sink.feed(view)
                    if progress is not None:
                        progress(chunk.stop - sel.start)
                # The pickles first: the zarr writer threads keep writing chunks meanwhile.
                for kind in sorted(sinks, key=lambda k: k == "zarr"):
                    digests[kind] = sinks[kind].close()
            except BaseException:
                for sink in sinks.values():
                    sink.abort()
                raise
        info = {
            "n_steps": sel.n_steps,
            "steps": [sel.start, sel.stop],
            "env": sel.env,
            "run_status": lg.run_status,
            "rows": plan.mode if plan else None,
            "n_rows": plan.n_rows if plan else None,
            "frame_rate_hz": plan.frame_rate_hz if plan else None,
        }
        return {kind: dict(info, path=path, **digests[kind]) for kind, path in outputs.items()}
    finally:
        if owned:
            lg.close()


def export_weight_stats(
    log: LogArg, out: str, *, force: bool = False, progress: Optional[Progress] = None
) -> Dict[str, Any]:
    """Write weight_stats.pkl (legacy full script with --show_weights); keys in moetape.replay.legacy_map."""
    return export_many(log, {"weight_stats": out}, force=force, progress=progress)["weight_stats"]


def export_results(
    log: LogArg, out: str, *, weights: bool = True, force: bool = False, progress: Optional[Progress] = None
) -> Dict[str, Any]:
    """Write moe_results.pkl (legacy simple script); ``weights=False`` is the run without --show_weights."""
    return export_many(log, {"results": out}, weights=weights, force=force, progress=progress)["results"]


def export_zarr(
    log: LogArg,
    out: str,
    *,
    rows: str = "auto",
    weights: bool = True,
    force: bool = False,
    progress: Optional[Progress] = None,
) -> Dict[str, Any]:
    """Write logs.zarr (zarr v2, legacy full script), streaming with bounded memory."""
    return export_many(log, {"zarr": out}, rows=rows, weights=weights, force=force, progress=progress)["zarr"]


def export_pkl(
    log: LogArg,
    out: str,
    *,
    rows: str = "auto",
    weights: bool = True,
    force: bool = False,
    progress: Optional[Progress] = None,
) -> Dict[str, Any]:
    """Write logs.pkl (legacy full script): the logs.zarr data as per-row lists with the original keys."""
    return export_many(log, {"pkl": out}, rows=rows, weights=weights, force=force, progress=progress)["pkl"]
