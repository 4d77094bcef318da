"""PNG plots of the gating of one env, streamed and decimated so memory stays bounded.

``plot_all`` writes ``gate_panels.png`` (the legacy script's four panels: weight histograms,
base-vs-arm scatter, weight timeline, box plot) and ``timeline.png`` (weights, entropy and EE
position error on one time axis in seconds, episode boundaries as vertical lines).
``plot_compare`` writes ``compare_timeline.png`` (two logs side by side).

Long logs are reduced while streaming: timelines keep min/max/mean per time bin (at most
``MAX_BINS`` bins, drawn as a min-max band with the mean line), histograms and box plots come
from a 1000-bin histogram of each weight (box quartiles and whiskers to 1/1000 precision, no
outlier points), and the scatter keeps every k-th step (at most ``MAX_SCATTER`` points).
matplotlib is imported inside the functions and used without pyplot (no global backend change).
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from moetape.replay.analysis import ee_error, ee_error_fields, ee_error_source, step_range
from moetape.schema.errors import InputError
from moetape.schema.io import atomic_output, check_output
from moetape.schema.reader import Log

MAX_BINS = 2000
MAX_SCATTER = 5000
HIST_FINE_BINS = 1000
HIST_SHOWN_BINS = 50
GATE_PANELS = "gate_panels.png"
TIMELINE = "timeline.png"
COMPARE_TIMELINE = "compare_timeline.png"
DPI = 100
MAX_BOUNDARY_LINES = 200  # more episode starts than this would hide the data; they are counted instead

F64 = npt.NDArray[np.float64]


class Envelope:
    """Min, max and mean of S series per time bin over ``n_steps`` steps, in at most ``max_bins`` bins."""

    def __init__(
        self, n_steps: int, n_series: int, *, max_bins: Optional[int] = None, offset: int = 0
    ) -> None:
        """Cover steps [offset, offset + n_steps)."""
        self.offset = int(offset)
        self.n_steps = max(1, int(n_steps))
        self.n_bins = max(1, min(self.n_steps, MAX_BINS if max_bins is None else max_bins))
        shape = (self.n_bins, n_series)
        self.min = np.full(shape, np.inf)
        self.max = np.full(shape, -np.inf)
        self.sum = np.zeros(shape)
        self.count = np.zeros(shape, dtype=np.int64)

    def update(self, steps: npt.NDArray[np.int64], values: np.ndarray) -> None:
        """Add rows: steps int (n,) increasing, values (n, S); NaN values are skipped."""
        if steps.size == 0:
            return
        v = np.asarray(values, dtype=np.float64).reshape(steps.size, -1)
        b = np.minimum((steps - self.offset) * self.n_bins // self.n_steps, self.n_bins - 1)
        starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        ub = b[starts]
        finite = np.isfinite(v)
        self.min[ub] = np.fmin(self.min[ub], np.fmin.reduceat(np.where(finite, v, np.inf), starts, axis=0))
        self.max[ub] = np.fmax(self.max[ub], np.fmax.reduceat(np.where(finite, v, -np.inf), starts, axis=0))
        self.sum[ub] += np.add.reduceat(np.where(finite, v, 0.0), starts, axis=0)
        self.count[ub] += np.add.reduceat(finite.astype(np.int64), starts, axis=0)

    def times_s(self, dt_s: float) -> F64:
        """Return each bin's centre time, s (policy steps * dt_s)."""
        edges = np.ceil(np.arange(self.n_bins + 1) * self.n_steps / self.n_bins) + self.offset
        return np.asarray((edges[:-1] + edges[1:] - 1) / 2.0 * dt_s, dtype=np.float64)

    def series(self, i: int) -> Tuple[F64, F64, F64]:
        """Return (min, max, mean) of series ``i`` per bin; NaN where a bin has no value."""
        c = self.count[:, i]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(c > 0, self.sum[:, i] / np.maximum(c, 1), np.nan)
        lo = np.where(c > 0, self.min[:, i], np.nan)
        hi = np.where(c > 0, self.max[:, i], np.nan)
        return lo, hi, mean


class WeightHistogram:
    """A fine histogram of every expert's weight on [0, 1], with the exact mean, min and max."""

    def __init__(self, n_experts: int) -> None:
        self.counts = np.zeros((n_experts, HIST_FINE_BINS), dtype=np.int64)
        self.edges = np.linspace(0.0, 1.0, HIST_FINE_BINS + 1)
        self.sum = np.zeros(n_experts)
        self.min = np.full(n_experts, np.inf)
        self.max = np.full(n_experts, -np.inf)

    def update(self, gate: np.ndarray) -> None:
        """Add rows: gate (n, K)."""
        if gate.shape[0] == 0:
            return
        g = np.asarray(gate, dtype=np.float64)
        for k in range(g.shape[1]):
            self.counts[k] += np.histogram(g[:, k], bins=self.edges)[0]
        self.sum += g.sum(axis=0)
        self.min = np.minimum(self.min, g.min(axis=0))
        self.max = np.maximum(self.max, g.max(axis=0))

    def shown(self, k: int) -> Tuple[F64, F64]:
        """Return (density per shown bin, shown bin edges) of expert ``k``."""
        group = HIST_FINE_BINS // HIST_SHOWN_BINS
        counts = self.counts[k].reshape(HIST_SHOWN_BINS, group).sum(axis=1).astype(np.float64)
        edges = self.edges[::group]
        total = counts.sum()
        return (counts / (total * np.diff(edges)) if total else counts), edges

    def box(self, k: int, label: str) -> Dict[str, Any]:
        """Return matplotlib ``bxp`` stats for expert ``k`` (quartiles from the fine histogram)."""
        counts = self.counts[k]
        n = int(counts.sum())
        centres = (self.edges[:-1] + self.edges[1:]) / 2.0
        cum = np.cumsum(counts)

        def quantile(q: float) -> float:
            return float(centres[min(int(np.searchsorted(cum, q * n)), HIST_FINE_BINS - 1)])

        q1, med, q3 = quantile(0.25), quantile(0.5), quantile(0.75)
        iqr = q3 - q1
        nz = centres[counts > 0]
        lo_in = nz[nz >= q1 - 1.5 * iqr]
        hi_in = nz[nz <= q3 + 1.5 * iqr]
        whislo = max(float(self.min[k]), float(lo_in.min()) if lo_in.size else q1)
        whishi = min(float(self.max[k]), float(hi_in.max()) if hi_in.size else q3)
        return {
            "label": label,
            "q1": q1,
            "med": med,
            "q3": q3,
            "whislo": min(whislo, q1),
            "whishi": max(whishi, q3),
            "mean": float(self.sum[k] / max(n, 1)),
            "fliers": [],
        }


class _EnvTrace:
    """Everything the plots need from one env, accumulated over one streaming pass."""

    def __init__(self, log: Log, env: int, n_steps: int, *, start: int = 0) -> None:
        """Trace env ``env`` over policy steps [start, start + n_steps)."""
        self.log, self.env = log, env
        self.k = len(log.expert_names)
        self.start = start
        self.n_steps = n_steps
        self.weights = Envelope(n_steps, self.k, offset=start)
        self.entropy = Envelope(n_steps, 1, offset=start)
        self.error = Envelope(n_steps, 1, offset=start)
        self.hist = WeightHistogram(self.k)
        self.stride = max(1, math.ceil(n_steps / MAX_SCATTER))
        self.scatter: List[np.ndarray] = []
        self.boundaries: List[int] = []
        self._prev_episode: Optional[int] = None

    def run(self, *, with_details: bool = True) -> _EnvTrace:
        fields = ["gate", "gate_entropy", "episode"] + ee_error_fields(self.log)
        stop = self.start + self.n_steps
        for chunk in self.log.iter_chunks(fields, start=self.start, stop=stop, env=self.env):
            d = chunk.data
            steps = np.arange(chunk.start, chunk.stop, dtype=np.int64)
            gate = np.asarray(d["gate"])
            self.weights.update(steps, gate)
            self.error.update(steps, ee_error(d))
            if not with_details:
                continue
            self.entropy.update(steps, d["gate_entropy"])
            self.hist.update(gate)
            keep = steps % self.stride == 0
            if self.k > 1 and keep.any():
                self.scatter.append(gate[keep][:, :2].astype(np.float64))
            ep = np.asarray(d["episode"], dtype=np.int64)
            prev = np.r_[ep[0] if self._prev_episode is None else self._prev_episode, ep[:-1]]
            self.boundaries.extend(int(s) for s in steps[ep != prev])
            self._prev_episode = int(ep[-1])
        return self


# ---------------------------------------------------------------------------- drawing helpers
def _figure(size: Tuple[float, float]) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=DPI, layout="constrained")


def _band(ax: Any, t: F64, env: Envelope, i: int, label: str, color: Any) -> None:
    lo, hi, mean = env.series(i)
    if env.n_bins < env.n_steps:  # decimated: show the spread inside each bin
        ax.fill_between(t, lo, hi, color=color, alpha=0.25, linewidth=0)
    ax.plot(t, mean, color=color, linewidth=0.9, label=label)


def _boundaries(axes: Sequence[Any], times: Sequence[float]) -> None:
    if len(times) > MAX_BOUNDARY_LINES:
        return
    for i, ax in enumerate(axes):
        if times:
            ax.vlines(
                times,
                0,
                1,
                transform=ax.get_xaxis_transform(),
                colors="0.3",
                linestyles=":",
                linewidth=0.8,
                label="episode start" if i == 0 else None,
            )


def _save(fig: Any, path: str, force: bool) -> str:
    with atomic_output(path, force=force, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return path


def _prepare_out(out_dir: str, names: Sequence[str], force: bool) -> List[str]:
    """Create ``out_dir`` if needed; refuse existing outputs unless ``force`` (before any work)."""
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"{out_dir}: exists and is not a folder; -o expects a folder for the PNGs.")
    paths = [os.path.join(out_dir, n) for n in names]
    for p in paths:
        check_output(p, force=force)
    os.makedirs(out_dir, exist_ok=True)
    return paths


def _check_env(log: Log, env: int) -> None:
    if not 0 <= int(env) < log.n_envs:
        raise InputError(
            f"{log.path}: --env {env} out of range; the log has {log.n_envs} env(s) (0-{log.n_envs - 1})."
        )
    if log.n_steps == 0:
        raise InputError(f"{log.path}: no committed steps; nothing to plot.")


def _colors(k: int) -> List[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(k)]


# ---------------------------------------------------------------------------- figures
def _draw_panels(tr: _EnvTrace, names: List[str], title: str) -> Any:
    fig = _figure((12, 9))
    (ax_h, ax_s), (ax_t, ax_b) = fig.subplots(2, 2)
    colors = _colors(tr.k)
    for k, name in enumerate(names):
        dens, edges = tr.hist.shown(k)
        ax_h.stairs(dens, edges, fill=True, alpha=0.45, color=colors[k], label=name)
    ax_h.set(title="Gate weight distribution", xlabel="weight", ylabel="density", xlim=(0, 1))
    ax_h.legend()
    if tr.k > 1 and tr.scatter:
        pts = np.concatenate(tr.scatter)
        ax_s.scatter(pts[:, 0], pts[:, 1], s=8, alpha=0.3, color=colors[0], linewidths=0)
        note = "" if tr.stride == 1 else f" (every {tr.stride}th step)"
        ax_s.set(
            title=f"{names[0]} vs {names[1]} weight{note}",
            xlabel=names[0] + " weight",
            ylabel=names[1] + " weight",
            xlim=(-0.02, 1.02),
            ylim=(-0.02, 1.02),
        )
    else:
        ax_s.text(0.5, 0.5, "one expert: no scatter", ha="center", va="center", transform=ax_s.transAxes)
        ax_s.set_axis_off()
    t = tr.weights.times_s(tr.log.policy_dt_s)
    for k, name in enumerate(names):
        _band(ax_t, t, tr.weights, k, name, colors[k])
    ax_t.set(title="Gate weights over time", xlabel="time (s)", ylabel="weight", ylim=(-0.02, 1.02))
    ax_t.legend(loc="upper right")
    ax_b.bxp([tr.hist.box(k, name) for k, name in enumerate(names)], showfliers=False, showmeans=True)
    ax_b.set(title="Gate weight box plot (whiskers 1.5 IQR)", ylabel="weight", ylim=(-0.02, 1.02))
    fig.suptitle(title)
    return fig


def _draw_timeline(tr: _EnvTrace, names: List[str], title: str) -> Any:
    fig = _figure((12, 8))
    ax_w, ax_e, ax_r = fig.subplots(3, 1, sharex=True)
    colors = _colors(tr.k)
    dt = tr.log.policy_dt_s
    t = tr.weights.times_s(dt)
    for k, name in enumerate(names):
        _band(ax_w, t, tr.weights, k, name, colors[k])
    ax_w.set(ylabel="gate weight", ylim=(-0.02, 1.02))
    _band(ax_e, t, tr.entropy, 0, "gate entropy", "tab:purple")
    if tr.k > 1:
        ax_e.axhline(math.log(tr.k), color="0.5", linestyle="--", linewidth=0.8, label=f"max ln {tr.k}")
    ax_e.set(ylabel="entropy (nats)")
    _band(ax_r, t, tr.error, 0, "EE position error", "tab:red")
    ax_r.set(ylabel="EE pos error (m)", xlabel="time (s)")
    if not tr.error.count.any():
        ax_r.text(
            0.5, 0.5, "no finite EE error in this env", ha="center", va="center", transform=ax_r.transAxes
        )
    _boundaries([ax_w, ax_e, ax_r], [s * dt for s in tr.boundaries])
    for ax in (ax_w, ax_e, ax_r):
        ax.legend(loc="upper right", fontsize="small")
    if len(tr.boundaries) > MAX_BOUNDARY_LINES:
        title += f" | {len(tr.boundaries)} episode starts (too many to draw)"
    fig.suptitle(title)
    return fig


def plot_all(
    log: Log,
    out_dir: str,
    *,
    env: int = 0,
    force: bool = False,
    start: Optional[int] = None,
    stop: Optional[int] = None,
) -> List[str]:
    """Write gate_panels.png and timeline.png of env ``env`` into ``out_dir``; return their paths.

    Args:
        start, stop: plot policy steps [start, stop) only; default every committed step.

    Raises:
        InputError: env out of range, no steps, a bad step range, or out_dir is a file.
        OutputExistsError: a PNG exists and force is False (nothing is written then).
    """
    _check_env(log, env)
    a, b = step_range(log, start, stop)
    paths = _prepare_out(out_dir, [GATE_PANELS, TIMELINE], force)
    tr = _EnvTrace(log, int(env), b - a, start=a).run()
    names = log.expert_names
    rng = f"{log.n_steps} steps" if (a, b) == (0, log.n_steps) else f"steps {a}-{b - 1} of {log.n_steps}"
    where = f"{os.path.basename(log.path)} | env {env} | {rng} ({(b - a) * log.policy_dt_s:.2f} s) | EE error: {ee_error_source(log)}"
    _save(_draw_panels(tr, names, where), paths[0], force)
    _save(_draw_timeline(tr, names, where), paths[1], force)
    return paths


def plot_compare(
    log_a: Log, log_b: Log, out_dir: str, *, env: int = 0, force: bool = False, n_steps: Optional[int] = None
) -> List[str]:
    """Write compare_timeline.png: gate weights and EE error of two logs side by side (common steps).

    Args:
        n_steps: steps to plot; default the common range min(n_steps of a, b).

    Raises:
        InputError: env out of range or no common steps.
        OutputExistsError: the PNG exists and force is False.
    """
    for lg in (log_a, log_b):
        _check_env(lg, env)
    n = min(log_a.n_steps, log_b.n_steps) if n_steps is None else int(n_steps)
    (path,) = _prepare_out(out_dir, [COMPARE_TIMELINE], force)
    traces = [_EnvTrace(lg, int(env), n).run(with_details=False) for lg in (log_a, log_b)]
    names = log_a.expert_names
    colors = _colors(len(names))
    fig = _figure((14, 7))
    axes = fig.subplots(2, 2, sharex=True, sharey="row")
    for col, (lg, tr) in enumerate(zip((log_a, log_b), traces)):
        t = tr.weights.times_s(lg.policy_dt_s)
        for k, name in enumerate(names):
            _band(axes[0, col], t, tr.weights, k, name, colors[k])
        _band(axes[1, col], t, tr.error, 0, "EE position error", "tab:red")
        axes[0, col].set(title="{}: {}".format("AB"[col], os.path.basename(lg.path)), ylim=(-0.02, 1.02))
        axes[1, col].set(xlabel="time (s)")
        axes[0, col].legend(loc="upper right", fontsize="small")
    axes[0, 0].set(ylabel="gate weight")
    axes[1, 0].set(ylabel="EE pos error (m)")
    fig.suptitle(f"env {env} | {n} common steps ({n * log_a.policy_dt_s:.2f} s)")
    _save(fig, path, force)
    return [path]
