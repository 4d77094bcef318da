"""Run stats or derive over many logs on a dask.distributed cluster (the only module importing dask).

A sweep is a list of tasks, one per log. A log far larger than the others is split: into env
ranges when the table has a row per env, else into step ranges whose mergeable partial statistics
(``analysis.partial_summary``) are merged by a task that depends on them (``analysis.merge_partials``).
Each task runs on a worker process and calls the single-log functions (``analysis.summary``,
``derive.derive``), so every figure equals what ``moetape stats`` or ``moetape derive`` gives for
that log, value for value; each task streams its log in bounded memory.

The default cluster is local: ``LocalCluster`` of worker processes (one thread each), the
scheduler, workers and dashboard listening on 127.0.0.1 only. ``scheduler="tcp://host:8786"``
uses a cluster of the user's own instead (e.g. dask-jobqueue on SLURM; the logs' paths must be
readable from its workers).

Faults: a log that cannot be read becomes an error row; a worker process that dies mid-task has
its task rerun by the scheduler (up to ``distributed.scheduler.allowed-failures`` times, then the
log gets an error row); Ctrl-C (KeyboardInterrupt) closes the client and the local cluster.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from moetape.schema.errors import InputError, LogError

LOOPBACK = "127.0.0.1"
SPLIT_FACTOR = 4.0
Notice = Callable[[str], None]


def _dask() -> Tuple[Any, Any]:
    try:
        import distributed
        from distributed import LocalCluster
    except ImportError:
        raise InputError("a sweep needs dask.distributed: pip install 'moetape[sweep]'") from None
    return distributed, LocalCluster


# ---------------------------------------------------------------------------- tasks (run on workers)
@dataclass(frozen=True)
class StatsTask:
    """One unit of a stats sweep: a log, and the envs to give a row each (``per`` "env") or the steps
    whose partial statistics it computes (``steps``, whole-log rows), if the log is split."""

    index: int
    path: str
    per: Optional[str] = None
    envs: Optional[Tuple[int, int]] = None  # [first, last + 1) when the log's envs are split
    start: Optional[int] = None
    stop: Optional[int] = None
    steps: Optional[Tuple[int, int]] = None  # [a, b) when the log's steps are split (per None)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def stats_task(task: StatsTask) -> List[Dict[str, Any]]:
    """Return the table rows of one task: ``analysis.summary`` of the log (per env/episode), flattened.

    A log moetape cannot read (missing, corrupt, truncated, bad selection) gives one error row.
    """
    from moetape.replay.analysis import summary
    from moetape.replay.sweep_table import error_row, identity_of, rows_of_summary
    from moetape.schema.reader import open_log

    identity: Optional[Dict[str, Any]] = None
    try:
        with open_log(os.path.abspath(task.path)) as log:
            identity = identity_of(log, task.path)
            a, b = task.start, task.stop
            if task.per is None:
                return rows_of_summary(summary(log, start=a, stop=b), identity)
            rows: List[Dict[str, Any]] = []
            if task.per == "env":
                first, last = task.envs if task.envs is not None else (0, log.n_envs)
                for env in range(first, last):
                    rows += rows_of_summary(summary(log, env=env, start=a, stop=b), identity, env=env)
                return rows
            whole = summary(log, start=a, stop=b)
            for ep in [r["episode"] for r in whole["correlation"]["by_episode"]]:
                rows += rows_of_summary(summary(log, episode=ep, start=a, stop=b), identity, episode=ep)
            return rows
    except (LogError, OSError) as e:
        return [error_row(task.path, _one_line(e), identity)]


def stats_part_task(task: StatsTask) -> Any:
    """Return the partial statistics of ``task.steps`` of the log, or its error rows."""
    from moetape.replay.analysis import partial_summary
    from moetape.replay.sweep_table import error_row
    from moetape.schema.reader import open_log

    assert task.steps is not None
    try:
        with open_log(os.path.abspath(task.path)) as log:
            return partial_summary(log, *task.steps)
    except (LogError, OSError) as e:
        return [error_row(task.path, _one_line(e))]


def stats_merge_task(task: StatsTask, *parts: Any) -> List[Dict[str, Any]]:
    """Return the whole-log rows of a log split into step ranges, from the partials of its ranges."""
    from moetape.replay.analysis import merge_partials
    from moetape.replay.sweep_table import error_row, identity_of, rows_of_summary
    from moetape.schema.reader import open_log

    for p in parts:
        if isinstance(p, list):
            return p  # a range could not be read: its error row
    identity: Optional[Dict[str, Any]] = None
    try:
        with open_log(os.path.abspath(task.path)) as log:
            identity = identity_of(log, task.path)
            return rows_of_summary(merge_partials(log, parts), identity)
    except (LogError, OSError) as e:
        return [error_row(task.path, _one_line(e), identity)]


def derive_task(path: str, out_dir: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """Derive one log into ``out_dir`` on a worker; return {path, out, files, notes} or {path, error}."""
    from moetape.replay.derive import derive

    notes: List[str] = []
    try:
        manifest = derive(os.path.abspath(path), out_dir, notice=notes.append, **options)
    except (LogError, OSError) as e:
        return {"path": path, "out": out_dir, "error": _one_line(e), "notes": notes}
    return {"path": path, "out": out_dir, "files": len(manifest["files"]), "notes": notes, "error": None}


# ---------------------------------------------------------------------------- planning
def plan_stats(
    paths: Sequence[str],
    *,
    per: Optional[str] = None,
    start: Optional[int] = None,
    stop: Optional[int] = None,
    split_factor: float = SPLIT_FACTOR,
) -> List[StatsTask]:
    """Return the tasks of a stats sweep; a log over ``split_factor`` x the median size is split into
    parts of about the median size each (its rows are the same, computed in parallel): env ranges
    with ``per="env"``, step ranges (at the chunk boundaries of ``moetape stats``'s pass, so the
    merged figures are exact) for whole-log rows (``per`` None). A log still being recorded, and
    ``per="episode"``, are not split.
    """
    if per not in (None, "env", "episode"):
        raise InputError(f"--per {per}: expected env or episode.")
    sizes = [os.path.getsize(p) if os.path.isfile(p) else 0 for p in paths]
    median = statistics.median(sizes) if sizes else 0
    tasks: List[StatsTask] = []
    for i, (p, size) in enumerate(zip(paths, sizes)):
        big = median > 0 and size > split_factor * median
        ranges = _step_ranges(p, math.ceil(size / median), start, stop) if per is None and big else None
        if ranges is not None:
            tasks += [StatsTask(i, p, None, None, start, stop, r) for r in ranges]
            continue
        n_envs = _n_envs(p) if per == "env" and median > 0 and size > split_factor * median else None
        if n_envs is None or n_envs < 2:
            tasks.append(StatsTask(i, p, per, None, start, stop))
            continue
        parts = min(n_envs, math.ceil(size / median))
        bounds = [round(j * n_envs / parts) for j in range(parts + 1)]
        tasks += [StatsTask(i, p, per, (a, b), start, stop) for a, b in zip(bounds, bounds[1:]) if b > a]
    return tasks


def _step_ranges(
    path: str, parts: int, start: Optional[int], stop: Optional[int]
) -> Optional[List[Tuple[int, int]]]:
    """Return up to ``parts`` consecutive step ranges covering the log's selected steps, each starting
    at a chunk boundary of the single-log pass; None if the log cannot or need not be split."""
    from moetape.replay.analysis import chunk_steps, select
    from moetape.schema.layout import STATUS_RUNNING
    from moetape.schema.reader import open_log

    try:
        with open_log(path) as log:
            if log.run_status == STATUS_RUNNING:
                return None  # still growing: one task reads what is committed when it runs
            sel = select(log, start=start, stop=stop)
            per = chunk_steps(log)
    except (LogError, OSError):
        return None  # the task itself reports it
    n_chunks = math.ceil((sel.stop - sel.start) / per)
    parts = min(parts, n_chunks)
    if parts < 2:
        return None
    cuts = [sel.start + round(j * n_chunks / parts) * per for j in range(parts)] + [sel.stop]
    return list(zip(cuts, cuts[1:]))


def _n_envs(path: str) -> Optional[int]:
    from moetape.schema.reader import open_log

    try:
        with open_log(path) as log:
            return log.n_envs
    except (LogError, OSError):
        return None  # the task itself reports it


def derive_folders(paths: Sequence[str], out_root: str) -> List[str]:
    """Return each log's derived folder under ``out_root``: its path below the logs' common folder,
    without the suffix (runs/a/log.h5, runs/b/log.h5 -> OUT/a/log, OUT/b/log).

    Raises:
        InputError: two logs would share a folder (the same log given twice).
    """
    absolute = [os.path.abspath(p) for p in paths]
    parents = [os.path.dirname(p) for p in absolute]
    common = os.path.commonpath(parents) if parents else ""
    folders = [os.path.join(out_root, os.path.splitext(os.path.relpath(p, common))[0]) for p in absolute]
    seen: Dict[str, str] = {}
    for p, f in zip(paths, folders):
        if f in seen:
            raise InputError(f"{p}: same derived folder {f} as {seen[f]}; give each log once.")
        seen[f] = p
    return folders


# ---------------------------------------------------------------------------- the cluster
@contextlib.contextmanager
def open_client(
    *, scheduler: Optional[str] = None, workers: Optional[int] = None, n_tasks: Optional[int] = None
) -> Iterator[Any]:
    """Yield a dask Client: to ``scheduler`` if given, else to a local cluster on 127.0.0.1 only.

    The local cluster has ``workers`` processes (default: the machine's cores, at most ``n_tasks``),
    one thread each; it is closed when the block ends, also on Ctrl-C.

    Raises:
        InputError: dask.distributed missing, ``workers`` below 1, or the scheduler unreachable.
    """
    distributed, LocalCluster = _dask()
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers}: expected 1 or more worker processes.")
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as e:
            raise InputError(
                f"--scheduler {scheduler}: cannot connect ({_one_line(e)}); is the scheduler running?"
            ) from None
        with client:
            yield client
        return
    n = workers or max(1, min(os.cpu_count() or 1, n_tasks or os.cpu_count() or 1))
    import dask

    # dask sets MALLOC_TRIM_THRESHOLD_ in its workers, which turns off glibc's adaptive mmap
    # threshold: every chunk-sized numpy array is then a fresh mmap (page faults on each chunk).
    no_trim = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    with _sigint_deferred() as interrupted, dask.config.set(no_trim):  # a half-started cluster cannot close
        cluster = LocalCluster(
            host=LOOPBACK,
            dashboard_address=f"{LOOPBACK}:0",  # its HTTP server (metrics; the dashboard with bokeh)
            processes=True,
            n_workers=n,
            threads_per_worker=1,
            silence_logs=logging.ERROR,
        )
        try:
            client = distributed.Client(cluster)
        except BaseException:
            cluster.close()
            raise
    with cluster, client:
        if interrupted:
            raise KeyboardInterrupt
        yield client


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[List[int]]:
    """Hold Ctrl-C (SIGINT) back until the block ends; yield a list that is non-empty if one came."""
    import signal
    import threading

    got: List[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield got
    finally:
        signal.signal(signal.SIGINT, previous)


def dashboard_link(client: Any) -> Optional[str]:
    """Return the cluster's dashboard address, or None when it has none (no bokeh on the scheduler)."""
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        if not client.run_on_scheduler(_scheduler_has_bokeh):
            return None
        return str(client.dashboard_link)
    except Exception:  # noqa: BLE001 - a dashboard link is a courtesy; never fail the sweep on it
        return None


def _scheduler_has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def _gather(
    client: Any,
    submitted: Dict[Any, Any],
    on_done: Callable[[Any, Any], None],
    on_failure: Callable[[Any, BaseException], None],
) -> None:
    """Collect results as they finish; a task that failed (its worker died too often) goes to on_failure."""
    distributed, _ = _dask()
    for fut in distributed.as_completed(list(submitted)):
        item = submitted[fut]
        try:
            result = fut.result()
        except Exception as e:  # noqa: BLE001 - KilledWorker, or a bug on the worker: reported per log
            on_failure(item, e)
        else:
            on_done(item, result)
        fut.release()


def _failure_text(e: BaseException) -> str:
    if type(e).__name__ == "KilledWorker":
        return "the worker process running it died repeatedly (out of memory?); rerun this log alone"
    return f"unexpected {type(e).__name__} on the worker: {_one_line(e)}"


def run_stats(
    client: Any,
    tasks: Sequence[StatsTask],
    *,
    progress: Optional[Callable[[int, int], None]] = None,
    on_result: Optional[Callable[[int], None]] = None,
) -> List[Dict[str, Any]]:
    """Run the tasks on ``client``; return every row, in the order of the logs then of the tasks."""
    from moetape.replay.sweep_table import error_row

    results: Dict[int, List[Dict[str, Any]]] = {}
    submitted: Dict[Any, Tuple[List[int], StatsTask]] = {}
    j = 0
    while j < len(tasks):
        t = tasks[j]
        name = os.path.basename(t.path)
        if t.steps is None:
            fut = client.submit(stats_task, t, key=f"moetape-stats-{j}-{name}", pure=False)
            submitted[fut] = ([j], t)
            j += 1
            continue
        group = [j]
        while (
            group[-1] + 1 < len(tasks)
            and tasks[group[-1] + 1].index == t.index
            and tasks[group[-1] + 1].steps
        ):
            group.append(group[-1] + 1)
        parts = [
            client.submit(stats_part_task, tasks[g], key=f"moetape-part-{g}-{name}", pure=False)
            for g in group
        ]
        fut = client.submit(stats_merge_task, t, *parts, key=f"moetape-stats-{j}-{name}", pure=False)
        submitted[fut] = (group, t)
        j = group[-1] + 1

    def done(item: Tuple[List[int], StatsTask], rows: List[Dict[str, Any]]) -> None:
        for g in item[0]:
            results[g] = rows if g == item[0][0] else []
        if progress is not None:
            progress(len(results), len(tasks))
        if on_result is not None:
            on_result(len(results))

    def failed(item: Tuple[List[int], StatsTask], e: BaseException) -> None:
        done(item, [error_row(item[1].path, _failure_text(e))])

    _gather(client, submitted, done, failed)
    rows: List[Dict[str, Any]] = []
    for j in range(len(tasks)):
        part = results[j]
        if (
            part
            and part[0].get("error")
            and any(r.get("error") == part[0]["error"] for r in rows if r["path"] == part[0]["path"])
        ):
            continue  # a split log's error is reported once
        rows += part
    return rows


def run_derive(
    client: Any,
    paths: Sequence[str],
    folders: Sequence[str],
    options: Dict[str, Any],
    *,
    progress: Optional[Callable[[int, int], None]] = None,
) -> List[Dict[str, Any]]:
    """Derive every log into its folder on ``client``; return one result dict per log, in order."""
    results: Dict[int, Dict[str, Any]] = {}
    submitted = {
        client.submit(
            derive_task, p, f, options, key=f"moetape-derive-{i}-{os.path.basename(p)}", pure=False
        ): i
        for i, (p, f) in enumerate(zip(paths, folders))
    }

    def done(i: int, result: Dict[str, Any]) -> None:
        results[i] = result
        if progress is not None:
            progress(len(results), len(paths))

    def failed(i: int, e: BaseException) -> None:
        done(i, {"path": paths[i], "out": folders[i], "error": _failure_text(e), "notes": []})

    _gather(client, submitted, done, failed)
    return [results[i] for i in range(len(paths))]
