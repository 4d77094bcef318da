"""Rerun's native viewer and its web viewer on localhost, fed a log (optionally one still recording).

``view_rerun`` starts Rerun's viewer (a window) or its web viewer server bound to 127.0.0.1, then
streams the recording ``moetape.replay.rerun_export`` builds into it over gRPC.

Usage data: Rerun's viewer collects anonymous usage data unless it is turned off. Every viewer and
server started here runs with ``viewer_env()``: Rerun's documented switch, ``rerun analytics
disable``, applied to a Rerun config folder of moetape's own (XDG_CONFIG_HOME), plus
``RERUN_ANALYTICS=0`` (the variable newer Rerun releases document). The servers bind 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Optional, Tuple

import rerun as rr

from moetape.replay.rerun_export import (
    EnvArg,
    Progress,
    RecordingWriter,
    new_recording,
    select_envs,
    stream_steps,
)
from moetape.schema.errors import InputError, LogError
from moetape.schema.reader import open_log

HOST = "127.0.0.1"


class RerunError(LogError, RuntimeError):
    """Rerun's viewer or server could not be started or stopped working."""


def rerun_executable() -> str:
    """Return the path of the ``rerun`` binary that rerun-sdk ships (package ``rerun_cli``)."""
    override = os.environ.get("RERUN_CLI_PATH")
    if override:
        return override
    import rerun_cli

    folder = os.path.dirname(os.path.abspath(rerun_cli.__file__))
    bundled = os.path.join(folder, "Rerun.app", "Contents", "MacOS", "Rerun")
    exe = bundled if sys.platform == "darwin" and os.path.exists(bundled) else os.path.join(folder, "rerun")
    if sys.platform.startswith("win"):
        exe += ".exe"
    if not os.path.exists(exe):
        raise RerunError(
            f"rerun-sdk is installed but its viewer binary is missing ({exe}); reinstall: pip install 'moetape[rerun]'"
        )
    return exe


def rerun_config_home() -> str:
    """Return the XDG_CONFIG_HOME moetape gives the Rerun processes it starts (their analytics.json)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "moetape", "rerun-config")


def _analytics_off(config_home: str) -> bool:
    try:
        with open(os.path.join(config_home, "rerun", "analytics.json"), encoding="utf-8") as f:
            return json.load(f).get("analytics_enabled") is False
    except (OSError, ValueError):
        return False


def viewer_env(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Return the environment for a Rerun viewer or server with its usage data collection off.

    Rerun's documented switch is ``rerun analytics disable``, which writes analytics.json in Rerun's
    config folder; it is run once against a config folder of moetape's own (XDG_CONFIG_HOME below
    ``rerun_config_home()``), so the user's own Rerun settings stay as they are. ``RERUN_ANALYTICS=0``
    is set too, the variable newer Rerun releases document.

    Raises:
        RerunError: the switch could not be applied.
    """
    env = dict(os.environ if base is None else base)
    home = rerun_config_home()
    env["XDG_CONFIG_HOME"] = home
    env["RERUN_ANALYTICS"] = "0"
    if not _analytics_off(home):
        os.makedirs(home, exist_ok=True)
        try:
            subprocess.run(
                [rerun_executable(), "analytics", "disable"],
                env=env,
                capture_output=True,
                timeout=120,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise RerunError(
                f"could not run `rerun analytics disable` ({e}); the viewer was not started."
            ) from e
        if not _analytics_off(home):
            raise RerunError(
                f"`rerun analytics disable` did not turn off Rerun's usage data in {home}; the viewer was not "
                "started. Run `rerun analytics disable` yourself and retry."
            )
    return env


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait_listening(proc: subprocess.Popen, port: int, log_file: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RerunError(f"the Rerun server exited with status {proc.returncode}: {_tail(log_file)}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RerunError(
        f"the Rerun server did not listen on {HOST}:{port} within {timeout_s:.0f} s: {_tail(log_file)}"
    )


def _tail(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return "(no output)"
    return lines[-1][-300:] if lines else "(no output)"


def web_url(web_port: int, grpc_port: int) -> str:
    """Return the address that opens the web viewer on the recording the gRPC server holds."""
    return f"http://{HOST}:{web_port}/?url=rerun%2Bhttp%3A%2F%2F{HOST}%3A{grpc_port}%2Fproxy"


def check_display(environ: Optional[Dict[str, str]] = None) -> None:
    """Raise RerunError when the native viewer cannot open a window (Linux without a display)."""
    env = os.environ if environ is None else environ
    if sys.platform.startswith("linux") and not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")):
        raise RerunError(
            "--rerun opens a window but there is no display (DISPLAY / WAYLAND_DISPLAY unset); "
            "use --web to serve the viewer to a browser, or `moetape export rerun` and open the .rrd elsewhere."
        )


def start_server(
    *, web: bool, port: Optional[int], log_file: str
) -> Tuple[subprocess.Popen, int, Optional[int]]:
    """Start Rerun's native viewer (``web`` False) or its web viewer server on 127.0.0.1.

    Returns:
        (process, gRPC port, web viewer port or None).
    """
    env = viewer_env()
    grpc = free_port()
    args = [rerun_executable(), "--bind", HOST, "--port", str(grpc)]
    web_port = None
    if web:
        web_port = free_port() if port is None else int(port)
        args += ["--serve-web", "--web-viewer-port", str(web_port)]
    else:
        args += ["--expect-data-soon"]
    out = open(log_file, "ab")  # noqa: SIM115 - owned by the process below
    try:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    except OSError as e:
        raise RerunError(f"could not start the Rerun viewer ({e}).") from e
    finally:
        out.close()
    try:
        _wait_listening(proc, grpc, log_file)
        if web_port is not None:
            _wait_listening(proc, web_port, log_file)
    except BaseException:
        stop_process(proc)
        raise
    return proc, grpc, web_port


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """End a process we started: SIGTERM, then SIGKILL if it does not exit in ``timeout_s``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def view_rerun(
    log_path: str,
    *,
    env: EnvArg = None,
    web: bool = False,
    port: Optional[int] = None,
    follow: bool = False,
    on_ready: Optional[Callable[[Dict[str, Any]], None]] = None,
    progress: Optional[Progress] = None,
    wait: bool = True,
) -> Dict[str, Any]:
    """Open Rerun's native viewer, or serve its web viewer on 127.0.0.1, and stream a log into it.

    ``on_ready`` gets {"url" (web only), "grpc_url", "pid"} once the viewer listens, before any step
    is sent. With ``follow``, steps are sent as they are committed until the run ends. With ``wait``
    the call returns when the viewer exits (native: the window is closed; web: Ctrl-C or SIGTERM).
    """
    if not web:
        check_display()
    with open_log(log_path) as log:
        envs = select_envs(log, env)
        if port is not None and not 0 < int(port) < 65536:
            raise InputError(f"--port {port}: expected a TCP port from 1 to 65535.")
        log_file = os.path.join(rerun_config_home(), "server.log")
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        restore = _sigterm_as_interrupt()
        proc = None
        rec: Optional[rr.RecordingStream] = None
        try:
            proc, grpc, web_port = start_server(web=web, port=port, log_file=log_file)
            grpc_url = f"rerun+http://{HOST}:{grpc}/proxy"
            info: Dict[str, Any] = {
                "grpc_url": grpc_url,
                "pid": proc.pid,
                "envs": envs,
                "mode": "web" if web else "native",
            }
            if web_port is not None:
                info["url"] = web_url(web_port, grpc)
            rec = new_recording(log)
            writer = RecordingWriter(rec, log, envs)
            rec.connect_grpc(grpc_url, default_blueprint=writer.blueprint())
            if on_ready is not None:
                on_ready(info)
            writer.send_static()
            info["steps_sent"] = stream_steps(writer, 0, None, progress=progress, follow=follow)
            rec.flush()
            info["run_status"] = log.run_status
            if wait:
                while proc.poll() is None:
                    time.sleep(0.2)
            return info
        except KeyboardInterrupt:
            return {"interrupted": True}
        finally:
            if rec is not None and proc is not None and proc.poll() is None:
                rec.disconnect()
            if proc is not None:
                stop_process(proc)
            restore()


def _sigterm_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM raise KeyboardInterrupt (so the viewer we started is stopped); return the undo."""
    try:
        old = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    except ValueError:  # not the main thread
        return lambda: None

    def restore() -> None:
        signal.signal(signal.SIGTERM, old)

    return restore
