"""Device and model checks of the MuJoCo Warp backend (moetape.record.warp_backend), as one-line errors.

``warp_device`` (no CUDA device, or not that one), and ``_put`` (the model and data on the device:
a feature MuJoCo Warp cannot simulate, or out of memory with an estimate of the envs that would fit).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import mujoco
import warp as wp

from moetape.schema.errors import InputError

wp.config.log_level = wp.LOG_WARNING  # warp prints every module it compiles or loads otherwise
import mujoco_warp as mjw  # noqa: E402  (after warp's configuration)

_OOM_WORDS = ("out of memory", "failed to allocate", "cudaerrormemoryallocation")


def warp_device(device: str) -> str:
    """Check that warp has ``device`` (cpu, cuda or cuda:N) and return warp's name for it.

    Raises:
        InputError: no CUDA device (or not that one) is visible to warp.
    """
    if device == "cpu":
        level, wp.config.log_level = wp.config.log_level, wp.LOG_ERROR  # no "no CUDA driver" warning
        try:
            _init()
        finally:
            wp.config.log_level = level
        return "cpu"
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    _init()
    count = wp.get_cuda_device_count()
    if index >= count:
        raise InputError(
            f"--device {device}: MuJoCo Warp sees {count} CUDA device(s) here, expected cuda:{index}; "
            "pass --device cpu to test on warp's CPU device (slow)"
        )
    return f"cuda:{index}"


def _init() -> None:
    wp.init()


def _put(model: mujoco.MjModel, n_envs: int, path: str, device: str) -> Tuple[Any, Any]:
    """The MuJoCo Warp model and data of ``n_envs`` worlds, or one line on what stops it.

    Raises:
        InputError: MuJoCo Warp cannot simulate a feature of the model (named), or the device has
            too little memory (with how many envs would fit).
    """
    try:
        m = mjw.put_model(model)
    except (NotImplementedError, ValueError) as e:
        raise InputError(
            f"{path}: MuJoCo Warp cannot simulate this model: {_one_line(e)}. Use --backend mujoco, or remove "
            "that feature from the MJCF"
        ) from e
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    try:
        d = mjw.put_data(model, data, nworld=n_envs)
    except (RuntimeError, MemoryError) as e:
        if not any(w in str(e).lower() for w in _OOM_WORDS) and not isinstance(e, MemoryError):
            raise
        raise InputError(
            f"--num_envs {n_envs}: out of memory on {device} for {n_envs} MuJoCo Warp worlds "
            f"({_one_line(e)}); about {_fits(model, device)} envs would fit. Pass a smaller --num_envs"
        ) from e
    return m, d


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _fits(model: mujoco.MjModel, device: str) -> int:
    """How many worlds of ``model`` fit in the free memory of ``device`` (from a 1- and 2-world data)."""
    data = mujoco.MjData(model)
    sizes = []
    for n in (1, 2):
        d = mjw.put_data(model, data, nworld=n)
        sizes.append(_data_bytes(d))
        del d
    per_world = max(1, sizes[1] - sizes[0])
    if device.startswith("cuda"):
        free = int(wp.get_device(device).free_memory)
    else:
        import os

        free = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return max(0, int(0.9 * (free - sizes[0])) // per_world)


def _data_bytes(obj: Any, seen: Optional[set] = None) -> int:
    """Bytes of every warp array held by a MuJoCo Warp Data (and its nested structs)."""
    seen = set() if seen is None else seen
    total = 0
    for v in vars(obj).values():
        if isinstance(v, wp.array):
            if id(v) not in seen:
                seen.add(id(v))
                total += int(v.capacity)
        elif hasattr(v, "__dict__") and type(v).__module__.startswith("mujoco_warp"):
            total += _data_bytes(v, seen)
    return total
