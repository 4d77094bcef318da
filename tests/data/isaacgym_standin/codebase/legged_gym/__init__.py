"""Stand-in of a UMI-on-Legs / QM-MoE ``legged_gym`` codebase (tests only): the env classes a recorder meets.

Written after real-stanford/umi-on-legs ``mani-centric-wbc/legged_gym/env/isaacgym`` and the QM-MoE
fork (``env_add_baseinfo.py``): same constructor keywords, attribute names, step/reset/infos contract,
reset-in-step, per-substep callback and ``__del__``, with a toy task and observation.
"""

import os

LEGGED_GYM_ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
