"""The host-copy ring of the MuJoCo Warp backend (moetape.record.warp_backend).

:class:`HostCopy` holds one step's device tensors the log keeps and their host copies (on CUDA, pinned
buffers filled on a copy stream, one event per step); :class:`PendingStep` is a launched policy step
whose fields are on their way to the host. The backend holds two HostCopy objects, a ring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import numpy as np
import torch

from moetape.record.backend import StepResult

if TYPE_CHECKING:
    from moetape.record.warp_backend import WarpBackend


class HostCopy:
    """One step's device tensors the log keeps, and their host copies: one copy per field per step.

    CUDA: ``start()`` queues a non-blocking copy of every field into pinned host memory on a copy
    stream that first waits for the compute stream, and records an event; ``wait()`` waits on that
    event. CPU: the device tensors are host memory; nothing is copied. The backend holds two (a ring):
    the copy of step t overlaps the compute of step t + 1, which fills the other one.

    ``keep`` tensors (the policy's action and gate) are copied with the step's own fields, straight
    from the caller's tensors; their host buffers are made on first use (shapes known then).
    """

    def __init__(self, device: torch.device, fields: Dict[str, Tuple[Tuple[int, ...], torch.dtype]]) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.dev = {k: torch.zeros(s, dtype=t, device=device) for k, (s, t) in fields.items()}
        self.keep_host: Dict[str, torch.Tensor] = {}
        self.pending: Optional[PendingStep] = None  # launched into this copy, not yet waited
        if self.cuda:
            self.host = {k: torch.zeros(s, dtype=t, pin_memory=True) for k, (s, t) in fields.items()}
            self.stream = torch.cuda.Stream(device)
            self.event = torch.cuda.Event()
        else:
            self.host = self.dev

    def claim(self) -> None:
        """Let the compute stream write ``dev`` again: after the copy of the step it held (on CUDA, a
        wait queued on the device, not on the host)."""
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_event(self.event)

    def start(
        self, names: Any = None, keep: Optional[Dict[str, torch.Tensor]] = None, frame_rows: int = 0
    ) -> None:
        """Queue the copies of ``names`` (default: every field) and of ``keep`` after the work queued so
        far; of ``frames/`` fields only the first ``frame_rows`` rows (0: all)."""
        keep = keep or {}
        if not self.cuda:
            self.keep_host = {k: v.detach() for k, v in keep.items()}
            return
        for k, v in keep.items():
            have = self.keep_host.get(k)
            if have is None or have.shape != v.shape or have.dtype != v.dtype:
                self.keep_host[k] = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
        for k in [k for k in self.keep_host if k not in keep]:
            del self.keep_host[k]
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for k in names if names is not None else self.dev:
                if frame_rows and k.startswith("frames/"):
                    self.host[k][:frame_rows].copy_(self.dev[k][:frame_rows], non_blocking=True)
                else:
                    self.host[k].copy_(self.dev[k], non_blocking=True)
            for k, v in keep.items():
                self.keep_host[k].copy_(v.detach(), non_blocking=True)
        self.event.record(self.stream)

    def wait(self) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        """Wait for the copies (the step's one synchronisation point); numpy views of the host copies
        of the fields and of ``keep``."""
        if self.cuda:
            self.event.synchronize()
        return (
            {k: v.numpy() for k, v in self.host.items()},
            {k: v.numpy() for k, v in self.keep_host.items()},
        )


class PendingStep:
    """A launched policy step whose log fields are on their way to the host (WarpBackend.launch_step).

    ``wait()`` materialises them once (later calls return the same result). Its arrays are views of
    the host copy, valid until two more steps are launched, except ``obs``, a copy (the runner
    logs it with the next step).
    """

    def __init__(
        self, backend: WarpBackend, copy: HostCopy, n_rows: int, keep: Dict[str, torch.Tensor]
    ) -> None:
        self._backend = backend
        self._copy = copy
        self._n_rows = n_rows
        self._keep = keep  # the caller's tensors stay alive (unreused by the allocator) until copied
        self._result: Optional[StepResult] = None

    def wait(self, frames_out: Optional[Dict[str, np.ndarray]] = None) -> StepResult:
        """Wait for the host copy and return the step (frame rows copied into ``frames_out`` when given).

        Raises:
            InputError: MuJoCo Warp's contact or constraint buffers overflowed during the step.
        """
        if self._result is not None:
            return self._result
        host, kept = self._copy.wait()
        self._result = self._backend._finish(host, kept, self._n_rows, frames_out)
        self._keep = {}
        if self._copy.pending is self:
            self._copy.pending = None
        return self._result
