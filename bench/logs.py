"""The synthetic logs the benchmarks read, built once and cached in bench/out/.

``cached_log(tag, n_steps, n_envs)``: bench/out/<tag>_<E>x<S>.h5, a ``moetape.schema.synthetic`` log
of E envs x S policy steps (frames_per_step=1), written under a temporary name and renamed into
place, so a run killed while building never leaves a partial log behind.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict, Optional

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def build_log(path: str, n_steps: int, n_envs: int, meta: Dict[str, Any]) -> None:
    """Write a synthetic log under a temporary name, then rename it into place."""
    from moetape.schema.synthetic import small_spec, synthetic_step
    from moetape.schema.writer import LogWriter

    spec = small_spec(n_envs, frames_per_step=1)
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    with LogWriter(tmp, spec, meta=meta) as log:
        for s in range(n_steps):
            log.append(*synthetic_step(spec, s, 0))
    os.replace(tmp, path)


def cached_log(tag: str, n_steps: int, n_envs: int, meta: Optional[Dict[str, Any]] = None) -> str:
    """Return bench/out/<tag>_<E>x<S>.h5, building it first if it is not there (said on stderr)."""
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"{tag}_{n_envs}x{n_steps}.h5")
    if not os.path.exists(path):
        t0 = time.perf_counter()
        build_log(path, n_steps, n_envs, meta or {"command_line": f"bench/{tag}.py"})
        print(f"built {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path
