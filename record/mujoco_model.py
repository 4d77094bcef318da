"""The robot model of the MuJoCo backend: the bundled MJCF, loading a user's, and the addresses of the
joints, actuators, bodies and end-effector site that the backend reads and writes every step."""

from __future__ import annotations

import re
from typing import Tuple

import mujoco
import numpy as np

from moetape.schema.errors import InputError

JOINT_NAMES: Tuple[str, ...] = tuple(
    f"{leg}_{part}_joint" for leg in ("FL", "FR", "RL", "RR") for part in ("hip", "thigh", "calf")
) + tuple(f"joint{i}" for i in range(1, 7))
"""The 18 actuated joints in action order: 12 legs (FL, FR, RL, RR x hip, thigh, calf), then the arm."""

DEFAULT_JOINT_POS = np.array([0, 0.8, -1.5] * 2 + [0, 1.0, -1.5] * 2 + [0, 0.4, 1.6, 0, -0.43, 0], np.float64)
"""rad (18,): default pose when the MJCF has no keyframe named "default"."""

BUNDLED_XML = __file__.rsplit("/", 1)[0] + "/assets/legged_manipulator.xml"
DEFAULT_SPAWN_Z_M = 0.34
"""m: spawn height of the trunk when the MJCF has no keyframe named "default"."""


def load_model(path: str) -> Tuple[mujoco.MjModel, str]:
    """Load a self-contained MJCF; return the model and its text. Raise InputError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read the robot MJCF ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a text file; expected an MJCF (XML) robot model") from e
    if re.search(r"<include\b|\bfile\s*=", text):
        raise InputError(
            f"{path}: only self-contained MJCF is supported (no <include> or file= meshes/textures), "
            "so the log can embed the model"
        )
    try:
        model = mujoco.MjModel.from_xml_string(text)
    except ValueError as e:
        why = "; ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
        raise InputError(f"{path}: MuJoCo cannot load it: {why}. Fix the MJCF or omit --robot") from e
    return model, text


class ModelIndices:
    """Model addresses the backend needs, resolved by name once."""

    def __init__(self, m: mujoco.MjModel, path: str) -> None:
        jids = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n) for n in JOINT_NAMES]
        missing = [n for n, j in zip(JOINT_NAMES, jids) if j < 0]
        if missing:
            which = (
                "joint " + repr(missing[0])
                if len(missing) == 1
                else "joints " + ", ".join(map(repr, missing))
            )
            raise InputError(f"{path}: {which} missing; expected the 18 joints {', '.join(JOINT_NAMES)}")
        free = [j for j in range(m.njnt) if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE]
        if not free:
            raise InputError(f"{path}: no free joint; the robot's trunk needs one")
        self.root_body = int(m.jnt_bodyid[free[0]])
        self.root_qpos = int(m.jnt_qposadr[free[0]])
        self.root_dof = int(m.jnt_dofadr[free[0]])
        self.qpos = np.array([m.jnt_qposadr[j] for j in jids])
        self.dof = np.array([m.jnt_dofadr[j] for j in jids])
        acts = {
            int(m.actuator_trnid[a, 0]): a
            for a in range(m.nu)
            if m.actuator_trntype[a] == mujoco.mjtTrn.mjTRN_JOINT
        }
        no_act = [n for n, j in zip(JOINT_NAMES, jids) if j not in acts]
        if no_act:
            raise InputError(
                f"{path}: no joint actuator for {', '.join(map(repr, no_act))}; add <position> actuators"
            )
        self.act = np.array([acts[j] for j in jids])
        bodies = [b for b in range(1, m.nbody) if m.body_rootid[b] == self.root_body]
        self.bodies = np.array(bodies)
        self.body_names = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, int(b)) for b in self.bodies]
        self.trunk_row = int(np.flatnonzero(self.bodies == self.root_body)[0])
        sid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "end_effector")
        if sid < 0:
            raise InputError(f"{path}: site 'end_effector' missing; put it at the arm tip")
        self.ee_site = sid
        self.ee_body = int(m.site_bodyid[sid])
        self.ee_site_quat = np.array(m.site_quat[sid], np.float64)
        key = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_KEY, "default")
        self.default_pos = np.array(m.key_qpos[key][self.qpos]) if key >= 0 else DEFAULT_JOINT_POS.copy()
        self.spawn_z = float(m.key_qpos[key][self.root_qpos + 2]) if key >= 0 else DEFAULT_SPAWN_Z_M
