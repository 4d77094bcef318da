"""Stand-in for NVIDIA Isaac Gym Preview 4's ``isaacgym`` package, for moetape's tests only.

Isaac Gym is not on PyPI and cannot be installed here. This package reproduces, on purpose, the
behaviours of the real one that a recorder depends on:

- importing any isaacgym module after ``torch`` raises the real ImportError (``gymdeps``);
- ``gymapi.SimParams`` / ``PhysXParams`` are fixed-attribute objects, filled by
  ``gymutil.parse_sim_config(cfg, sim_params)`` from the config's ``sim`` dict;
- the state tensors (``acquire_*_tensor`` + ``gymtorch.wrap_tensor``) are views of buffers that change
  only at ``refresh_*``; ``set_*_tensor_indexed`` takes effect at the next ``simulate``, so rigid-body
  poses and contact forces keep their old values until then (root and dof tensors show what the
  user wrote into them);
- ``destroy_sim`` of a sim already destroyed ends the process with status 139, like the segfault
  the real one gives at exit;
- a viewer needs a display (``DISPLAY``), is drawn only by ``draw_viewer``, and reports closed after
  ``ISAACGYM_STANDIN_CLOSE_VIEWER_AFTER`` draws when that variable is set;
  ``ISAACGYM_STANDIN_LOG`` names a file that gets one line per viewer draw and sim destroy.

The physics is a toy (joints follow the torques, the base sinks slowly), deterministic on the CPU.
"""

from isaacgym import gymdeps  # noqa: F401  (the torch-import check, as the real package does first)

__version__ = "1.0rc4-standin"
