"""An interactive matplotlib window over one log: the re-rendered robot and the gate over time.

Layout: the robot image (``FrameRenderer``) on the left; on the right the gate weights per expert,
the gate entropy and the EE position error (steps/terms/task_reaching_pos_err when the log has it,
else |target_pos - ee_pos|) against the policy step, each with a cursor at the shown step. Below: a
slider to scrub, a play/pause button and an env selector (radio buttons up to 8 envs, else a text
box). ``--follow`` polls a log that is still being recorded with a matplotlib timer and extends the
plots; when the cursor is at the last step it stays there as new steps arrive.

Stale rows after a reset (the log's ``stale_after_reset``, Isaac Gym): the robot image never shows
them (``FrameRenderer``), an EE error computed from a stale ee_pos is left out of the curve (a gap),
and the title says "EE pose stale (first step after a reset)" on such a step.

The drawing lives in plain functions and a ``Viewer`` class that take a Figure, so tests drive them
headless under the Agg backend; only ``run_viewer`` picks an interactive backend and shows a window.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Tuple

import numpy as np
import numpy.typing as npt

from moetape.replay.render import GATE_COLORS, FrameRenderer, RenderError, check_env, check_frames
from moetape.schema.reader import Log, open_log, stale_mask

VIEW_SIZE = (480, 360)
PLAY_FPS = 24.0
FOLLOW_POLL_MS = 500
MAX_RADIO_ENVS = 8
INTERACTIVE_BACKENDS = ("QtAgg", "TkAgg")
NON_INTERACTIVE = ("agg", "pdf", "ps", "svg", "cairo", "template")
POS_ERR_TERM = "task_reaching_pos_err"


@dataclass
class Series:
    """The per-step curves of one env: steps int64 (S,), gate float32 (S, K), entropy (S,), ee_err (S,)."""

    steps: npt.NDArray[np.int64]
    gate: npt.NDArray[np.float32]
    entropy: npt.NDArray[np.float32]
    ee_err: npt.NDArray[np.float32]
    names: List[str] = field(default_factory=list)
    err_label: str = "EE error (m)"

    def __len__(self) -> int:
        return int(len(self.steps))

    def extend(self, more: Series) -> Series:
        """Return this series followed by ``more`` (later steps of the same env)."""
        return Series(
            np.concatenate([self.steps, more.steps]),
            np.concatenate([self.gate, more.gate]),
            np.concatenate([self.entropy, more.entropy]),
            np.concatenate([self.ee_err, more.ee_err]),
            self.names,
            self.err_label,
        )


def load_series(log: Log, env: int, start: int = 0, stop: Optional[int] = None) -> Series:
    """Read the viewer's curves of env ``env`` for policy steps [start, stop) (streamed in chunks)."""
    use_term = POS_ERR_TERM in log.term_names
    fields = ["gate", "gate_entropy"] + (["terms/" + POS_ERR_TERM] if use_term else ["ee_pos", "target_pos"])
    gate, ent, err = [], [], []
    for chunk in log.iter_chunks(fields, start=start, stop=stop, env=env):
        gate.append(chunk.data["gate"])
        ent.append(chunk.data["gate_entropy"])
        if use_term:
            err.append(chunk.data["terms/" + POS_ERR_TERM])
        else:
            dist = np.linalg.norm(chunk.data["target_pos"] - chunk.data["ee_pos"], axis=-1).astype(np.float32)
            dist[stale_mask(log, chunk.start, chunk.stop, env=env, field="ee_pos")] = np.nan  # a gap
            err.append(dist)
    k = len(log.expert_names)
    stop = log.n_steps if stop is None else min(stop, log.n_steps)
    return Series(
        steps=np.arange(start, max(start, stop), dtype=np.int64),
        gate=np.concatenate(gate) if gate else np.zeros((0, k), np.float32),
        entropy=np.concatenate(ent) if ent else np.zeros(0, np.float32),
        ee_err=np.concatenate(err) if err else np.zeros(0, np.float32),
        names=log.expert_names,
        err_label=(POS_ERR_TERM + " (m)") if use_term else "|target_pos - ee_pos| (m)",
    )


@dataclass
class ViewerFigure:
    """The artists the viewer updates."""

    fig: Any
    ax_img: Any
    ax_gate: Any
    ax_ent: Any
    ax_err: Any
    image: Any
    gate_lines: List[Any]
    ent_line: Any
    err_line: Any
    cursors: List[Any]
    title: Any


def build_figure(fig: Any, series: Series, image_shape: Tuple[int, int]) -> ViewerFigure:
    """Lay out the image and the three timeline panels on ``fig`` and plot ``series``.

    Args:
        image_shape: (height, width) of the rendered robot image.
    """
    grid = fig.add_gridspec(
        3, 2, left=0.03, right=0.98, top=0.94, bottom=0.25, width_ratios=[1.15, 1], hspace=0.2, wspace=0.15
    )
    ax_img = fig.add_subplot(grid[:, 0])
    ax_img.set_axis_off()
    image = ax_img.imshow(np.zeros(image_shape + (3,), dtype=np.uint8), interpolation="nearest")
    ax_gate = fig.add_subplot(grid[0, 1])
    ax_ent = fig.add_subplot(grid[1, 1], sharex=ax_gate)
    ax_err = fig.add_subplot(grid[2, 1], sharex=ax_gate)
    colors = [tuple(c / 255.0 for c in GATE_COLORS[k % len(GATE_COLORS)]) for k in range(len(series.names))]
    gate_lines = [
        ax_gate.plot([], [], color=colors[k], lw=1.2, label=name)[0] for k, name in enumerate(series.names)
    ]
    ax_gate.set_ylim(-0.02, 1.02)
    ax_gate.set_ylabel("gate weight")
    ax_gate.legend(loc="upper right", fontsize=8, ncol=max(1, len(series.names)))
    ent_line = ax_ent.plot([], [], color="0.2", lw=1.0)[0]
    ax_ent.axhline(np.log(max(2, len(series.names))), color="0.6", ls="--", lw=0.8)
    ax_ent.set_ylim(0, np.log(max(2, len(series.names))) * 1.05)
    ax_ent.set_ylabel("entropy (nat)")
    err_line = ax_err.plot([], [], color="tab:red", lw=1.0)[0]
    ax_err.set_ylabel(series.err_label, fontsize=8)
    ax_err.set_xlabel("policy step")
    for ax in (ax_gate, ax_ent):
        ax.tick_params(labelbottom=False)
    cursors = [ax.axvline(0, color="k", lw=0.9, alpha=0.7) for ax in (ax_gate, ax_ent, ax_err)]
    title = fig.suptitle("", fontsize=10)
    view = ViewerFigure(
        fig, ax_img, ax_gate, ax_ent, ax_err, image, gate_lines, ent_line, err_line, cursors, title
    )
    set_series(view, series)
    return view


def set_series(view: ViewerFigure, series: Series) -> None:
    """Replace the plotted curves (another env, or more steps of a live log) and rescale."""
    x = series.steps
    for k, line in enumerate(view.gate_lines):
        line.set_data(x, series.gate[:, k] if len(series) else [])
    view.ent_line.set_data(x, series.entropy)
    view.err_line.set_data(x, series.ee_err)
    view.ax_gate.set_xlim(0, max(1, len(series) - 1))
    finite = series.ee_err[np.isfinite(series.ee_err)] if len(series) else np.zeros(0)
    top = float(finite.max()) if finite.size else 1.0
    view.ax_err.set_ylim(0, top * 1.05 if top > 0 else 1.0)


def draw_step(
    view: ViewerFigure, step: int, image: Optional[npt.NDArray[np.uint8]] = None, caption: str = ""
) -> None:
    """Move the cursors to ``step``, show ``image`` (uint8 (H, W, 3)) and set the title."""
    for cursor in view.cursors:
        cursor.set_xdata([step, step])
    if image is not None:
        view.image.set_data(image)
    view.title.set_text(caption)


def step_caption(log: Log, env: int, step: int, series: Series) -> str:
    """Return the title line of ``step``: time, env, gate weights and entropy."""
    parts = [
        f"{os.path.basename(log.path)}  env {env}  step {step}/{max(0, log.n_steps - 1)}  t {step * log.policy_dt_s:.2f} s"
    ]
    i = step - int(series.steps[0]) if len(series) else -1
    if 0 <= i < len(series):
        parts.append("  ".join(f"{n} {float(w):.2f}" for n, w in zip(series.names, series.gate[i])))
        parts.append(f"entropy {float(series.entropy[i]):.3f}")
    if 0 <= step < log.n_steps and stale_mask(log, step, step + 1, env=env, field="ee_pos")[0]:
        parts.append("EE pose stale (first step after a reset)")
    if log.run_status == "running":
        parts.append("(live)")
    return "   ".join(parts)


class Viewer:
    """The widgets and timers over a ViewerFigure; every handler is a method tests can call."""

    def __init__(
        self,
        fig: Any,
        log: Log,
        *,
        env: int = 0,
        follow: bool = False,
        size: Tuple[int, int] = VIEW_SIZE,
        renderer: Optional[FrameRenderer] = None,
    ) -> None:
        from matplotlib.widgets import Button, RadioButtons, Slider, TextBox

        self.log, self.env, self.follow = log, check_env(log, env), follow
        check_frames(log)
        self.renderer = renderer or FrameRenderer(log, env=self.env, size=size, overlay=False)
        self.series = load_series(log, self.env)
        self.view = build_figure(fig, self.series, (self.renderer.height, self.renderer.width))
        self.step = 0
        self.playing = False
        self._play_acc = 0.0
        n = max(1, log.n_steps)
        self.slider = Slider(
            fig.add_axes((0.16, 0.07, 0.5, 0.04)), "step", 0, max(1, n - 1), valinit=0, valstep=1, valfmt="%d"
        )
        self._syncing = False
        self.slider.on_changed(self._slider_moved)
        self.button = Button(fig.add_axes((0.02, 0.065, 0.07, 0.05)), "play")
        self.button.on_clicked(lambda _e: self.toggle_play())
        env_ax = fig.add_axes((0.76, 0.01, 0.22, 0.13))
        self.env_widget: Any
        if log.n_envs <= MAX_RADIO_ENVS:
            self.env_widget = RadioButtons(env_ax, [f"env {e}" for e in range(log.n_envs)], active=self.env)
            self.env_widget.on_clicked(lambda label: self.set_env(int(str(label).split()[1])))
        else:
            env_ax.set_position((0.78, 0.08, 0.1, 0.05))
            self.env_widget = TextBox(env_ax, "env ", initial=str(self.env))
            self.env_widget.on_submit(self._env_text)
        self.play_timer = fig.canvas.new_timer(interval=int(1000 / PLAY_FPS))
        self.play_timer.add_callback(self.tick)
        self.follow_timer = None
        if follow:
            self.follow_timer = fig.canvas.new_timer(interval=FOLLOW_POLL_MS)
            self.follow_timer.add_callback(self.poll)
            self.follow_timer.start()
        self.show(0)

    # ------------------------------------------------------------------ handlers
    def show(self, step: int) -> None:
        """Render and draw policy step ``step`` (clipped to the committed steps)."""
        step = int(np.clip(step, 0, max(0, self.log.n_steps - 1)))
        self.step = step
        image = self.renderer.render(step)
        draw_step(self.view, step, image, step_caption(self.log, self.env, step, self.series))
        if int(self.slider.val) != step:
            self._syncing = True  # set_val fires on_changed; the step is already drawn
            try:
                self.slider.set_val(step)
            finally:
                self._syncing = False
        self.view.fig.canvas.draw_idle()

    def _slider_moved(self, value: float) -> None:
        if not self._syncing:
            self.show(int(value))

    def toggle_play(self) -> None:
        """Start or stop playback in real time (policy steps at 1 / policy_dt_s per second)."""
        self.playing = not self.playing
        self.button.label.set_text("pause" if self.playing else "play")
        if self.playing:
            if self.step >= self.log.n_steps - 1:
                self.show(0)
            self.play_timer.start()
        else:
            self.play_timer.stop()

    def tick(self) -> None:
        """Advance playback by one display frame's worth of policy steps."""
        if not self.playing:
            return
        self._play_acc += 1.0 / (PLAY_FPS * self.log.policy_dt_s)
        advance = int(self._play_acc)
        self._play_acc -= advance
        if advance:
            if self.step + advance > self.log.n_steps - 1 and not self.follow:
                self.show(self.log.n_steps - 1)
                self.toggle_play()
            else:
                self.show(self.step + advance)

    def set_env(self, env: int) -> None:
        """Switch the shown env: curves, image and title."""
        self.env = check_env(self.log, env)
        self.renderer.set_env(self.env)
        self.series = load_series(self.log, self.env)
        set_series(self.view, self.series)
        self.show(self.step)

    def _env_text(self, text: str) -> None:
        try:
            self.set_env(int(text))
        except (ValueError, RenderError):
            self.env_widget.set_val(str(self.env))

    def poll(self) -> bool:
        """Pick up steps a live recording committed since the last poll; return True if any arrived."""
        at_end = self.step >= len(self.series) - 1
        self.log.refresh()
        n = self.log.n_steps
        if n <= len(self.series):
            return False
        self.series = self.series.extend(load_series(self.log, self.env, start=len(self.series), stop=n))
        set_series(self.view, self.series)
        self.slider.valmax = max(1, n - 1)
        self.slider.ax.set_xlim(self.slider.valmin, self.slider.valmax)
        self.show(n - 1 if at_end else self.step)
        return True

    def close(self) -> None:
        """Stop the timers and free the renderer."""
        self.play_timer.stop()
        if self.follow_timer is not None:
            self.follow_timer.stop()
        self.renderer.close()


# ---------------------------------------------------------------------------- window
def check_display(environ: Mapping[str, str], platform: str) -> None:
    """Raise RenderError if a Linux session has no display to open a window on."""
    if platform.startswith("linux") and not (environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")):
        raise RenderError(
            "no display (DISPLAY is not set): `moetape view` opens a window. On a headless "
            "machine write a video instead: moetape render LOG -o video.mp4"
        )


def use_interactive_backend() -> str:
    """Switch pyplot to an interactive backend (the current one if interactive, else QtAgg, TkAgg)."""
    import matplotlib
    import matplotlib.pyplot as plt

    current = str(matplotlib.get_backend())
    if current.lower() not in NON_INTERACTIVE and "inline" not in current.lower():
        return current
    failures = []
    for name in INTERACTIVE_BACKENDS:
        try:
            plt.switch_backend(name)
            return name
        except (ImportError, RuntimeError) as e:
            failures.append(f"{name}: {str(e).strip().splitlines()[0] if str(e).strip() else e}")
    raise RenderError(
        "no interactive matplotlib backend ({}). Install tkinter or PyQt, or write a video: "
        "moetape render LOG -o video.mp4".format("; ".join(failures))
    )


def run_viewer(log_path: str, *, env: int = 0, follow: bool = False) -> None:
    """Open the viewer window on ``log_path`` and block until it is closed.

    Raises:
        RenderError: no display, no interactive backend, or rendering unavailable.
        InputError: env out of range, or a log without frames.
    """
    check_display(os.environ, sys.platform)
    use_interactive_backend()
    import matplotlib.pyplot as plt

    with open_log(log_path) as log:
        fig = plt.figure(figsize=(13, 6.5))
        if fig.canvas.manager is not None:
            fig.canvas.manager.set_window_title("moetape view: " + os.path.basename(log_path))
        viewer = Viewer(fig, log, env=env, follow=follow)
        try:
            plt.show()
        finally:
            viewer.close()
