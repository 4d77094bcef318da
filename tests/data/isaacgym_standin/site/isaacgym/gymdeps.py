"""Stand-in of Isaac Gym Preview 4's ``isaacgym/gymdeps.py`` (tests only; the real one ships with Isaac Gym).

Like the real module, importing it first checks that PyTorch is not imported yet: Isaac Gym loads
its own CUDA/PhysX libraries and its torch bindings must come after them. The check runs once, when
the first isaacgym module is imported; later imports of isaacgym modules reuse the cached module.
"""

import sys


def _import_deps():
    # make sure that torch was not imported before isaacgym modules
    if "torch" in sys.modules:
        raise ImportError(
            "PyTorch was imported before isaacgym modules.  Please import torch after isaacgym modules."
        )


_import_deps()
