"""The EE-tracking task's maths on the device, for the MuJoCo Warp backend: torch operations over all
envs at once on the simulator's own arrays (``wp.to_torch`` views, float32), computed in float64.

Each function is the batched twin of a compiled loop of moetape.record.kernels (the MuJoCo backend's),
with the same formulas and the task's constants from moetape.record.mujoco_task; tests check both
against each other. Quaternions are wxyz unless a name says xyzw; rotation matrices map body to world.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Tuple

import mujoco
import numpy as np
import torch

from moetape.record import poses as mm
from moetape.record.mujoco_model import ModelIndices
from moetape.record.mujoco_task import (
    COS_MAX_TILT,
    MIN_BASE_HEIGHT_M,
    NEG_ERROR_SCALES,
    OBS,
    OBS_COMMANDS,
    OBS_SCALES,
    OBS_TARGETS,
    REWARD_WEIGHTS,
    SPAWN_XY,
    TERM_NAMES,
    TRUNK_CONTACT_N,
)

F64 = torch.float64


@dataclass
class SimViews:
    """MuJoCo Warp Data fields as torch tensors sharing the simulator's memory, float32."""

    qpos: torch.Tensor  # (E, nq)
    qvel: torch.Tensor  # (E, nv)
    ctrl: torch.Tensor  # (E, nu)
    xpos: torch.Tensor  # (E, nbody, 3)
    xquat: torch.Tensor  # (E, nbody, 4) wxyz
    site_xpos: torch.Tensor  # (E, nsite, 3)
    cfrc_ext: torch.Tensor  # (E, nbody, 6): torque, force
    actuator_force: torch.Tensor  # (E, nu)


@dataclass
class TaskConstants:
    """The model's addresses and the task's constants, as device tensors."""

    act: torch.Tensor
    qpos: torch.Tensor
    dof: torch.Tensor
    bodies: torch.Tensor
    default_pos: torch.Tensor  # float64 (18,)
    default_pos32: torch.Tensor  # float32 (18,)
    spawn_qpos: torch.Tensor  # float32 (nq,)
    site_rmul: torch.Tensor  # float64 (4, 4)
    root_qpos: int
    root_dof: int
    root_body: int
    ee_site: int
    ee_body: int

    @classmethod
    def build(cls, ix: ModelIndices, model: mujoco.MjModel, device: torch.device) -> TaskConstants:
        def long(a: Any) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a, np.int64), device=device)

        return cls(
            act=long(ix.act),
            qpos=long(ix.qpos),
            dof=long(ix.dof),
            bodies=long(ix.bodies),
            default_pos=torch.as_tensor(ix.default_pos, dtype=F64, device=device),
            default_pos32=torch.as_tensor(ix.default_pos, dtype=torch.float32, device=device),
            spawn_qpos=torch.as_tensor(spawn_qpos(ix, model), dtype=torch.float32, device=device),
            site_rmul=torch.as_tensor(mm.right_mul_matrix(ix.ee_site_quat), dtype=F64, device=device),
            root_qpos=ix.root_qpos,
            root_dof=ix.root_dof,
            root_body=ix.root_body,
            ee_site=ix.ee_site,
            ee_body=ix.ee_body,
        )


def spawn_qpos(ix: ModelIndices, model: mujoco.MjModel) -> np.ndarray:
    """The spawn pose's qpos (nq,) float64: MuJoCo's qpos0 (what mj_resetData sets), the trunk at the
    spawn point facing +x, the 18 joints at the default pose (as MujocoBackend._reset_envs)."""
    q = np.array(model.qpos0, np.float64)
    q[ix.root_qpos : ix.root_qpos + 7] = [SPAWN_XY[0], SPAWN_XY[1], ix.spawn_z, 1, 0, 0, 0]
    q[ix.qpos] = ix.default_pos
    return q


@contextlib.contextmanager
def Scope(device: str, stream: Any) -> Iterator[None]:  # noqa: N802 - used like a class
    """Warp launches on ``device`` (and, on CUDA, on torch's stream ``stream``)."""
    import warp as wp

    with wp.ScopedDevice(device):
        if stream is None:
            yield
        else:
            with wp.ScopedStream(stream):
                yield


def quat_to_mat(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) of unit quaternions (..., 4) wxyz (kernels._quat_to_mat)."""
    w, x, y, z = q.unbind(-1)
    rows = [
        w * w + x * x - y * y - z * z, 2.0 * (x * y - w * z), 2.0 * (x * z + w * y),
        2.0 * (x * y + w * z), w * w - x * x + y * y - z * z, 2.0 * (y * z - w * x),
        2.0 * (x * z - w * y), 2.0 * (y * z + w * x), w * w - x * x - y * y + z * z,
    ]  # fmt: skip
    return torch.stack(rows, -1).reshape(q.shape[:-1] + (3, 3))


def interpolate(
    rows: torch.Tensor, n_samples: int, dt_s: float, episodes: torch.Tensor, times_s: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Target poses of trajectory ``episodes`` (E,) at ``times_s`` (E, K) (kernels.interpolate_poses):
    pos float64 (E, K, 3), quat (E, K, 4) wxyz, from TargetTable's rows (N * (T + 1), 7)."""
    f = torch.clamp(times_s / dt_s, 0.0, n_samples - 1.0)
    i = torch.floor(f)
    w = (f - i)[..., None]
    at = episodes[:, None] * (n_samples + 1) + i.long()
    r0, r1 = rows[at], rows[at + 1]
    pose = r0 + (r1 - r0) * w
    q = pose[..., 3:]
    return pose[..., :3], q / torch.sqrt((q * q).sum(-1, keepdim=True))


def frame_targets(
    pos: torch.Tensor, quat: torch.Tensor, out_pos: torch.Tensor, out_quat_xyzw: torch.Tensor
) -> None:
    """Rows 0..R-1 of ``out_pos`` (>= R, E, M, 3) and ``out_quat_xyzw`` from ``pos`` (E, R * M, 3) and
    ``quat`` (E, R * M, 4) wxyz, row r's M first (kernels.frame_targets)."""
    e, m = pos.shape[0], out_pos.shape[2]
    r = pos.shape[1] // m
    out_pos[:r] = pos.reshape(e, r, m, 3).transpose(0, 1)
    out_quat_xyzw[:r] = quat[..., [1, 2, 3, 0]].reshape(e, r, m, 4).transpose(0, 1)


def poses(s: SimViews, c: TaskConstants) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EE site position, EE site quaternion (body quaternion times the site's fixed offset) and the
    base's rotation matrix, float64, from the current kinematics (kernels.refresh_poses)."""
    ee_pos = s.site_xpos[:, c.ee_site].double()
    ee_quat = s.xquat[:, c.ee_body].double() @ c.site_rmul
    r = c.root_qpos + 3
    return ee_pos, ee_quat, quat_to_mat(s.qpos[:, r : r + 4].double())


def pre_fields(
    pose: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    target_pos: torch.Tensor,
    target_quat: torch.Tensor,
    episode: torch.Tensor,
    step_in_episode: torch.Tensor,
    out: Dict[str, torch.Tensor],
) -> None:
    """The PRE_FIELDS of the current instant into ``out`` (MujocoBackend._pre_fields)."""
    ee_pos, ee_quat, _ = pose
    xyzw = [1, 2, 3, 0]
    out["ee_pos"].copy_(ee_pos)
    out["ee_quat_xyzw"].copy_(ee_quat[:, xyzw])
    out["target_pos"].copy_(target_pos[:, 0])
    out["target_quat_xyzw"].copy_(target_quat[:, 0, xyzw])
    out["episode"].copy_(episode)
    out["step_in_episode"].copy_(step_in_episode)


def frame_row(
    s: SimViews,
    c: TaskConstants,
    state: Tuple[torch.Tensor, torch.Tensor],
    time_s: torch.Tensor,
    out: Dict[str, torch.Tensor],
    k: int,
) -> None:
    """Frame row ``k`` into ``out["frames/..."][k]`` (kernels.frame_rows): the state ``state`` (qpos,
    qvel) before the substep just run, and what MuJoCo Warp derived during it (poses before it,
    actuator and contact forces). The free joint's angular velocity is rotated to the world frame."""
    qpos, qvel = state
    r, v = c.root_qpos, c.root_dof
    quat = qpos[:, r + 3 : r + 7].double()
    f = {name[7:]: t[k] for name, t in out.items() if name.startswith("frames/")}
    f["root_pos"].copy_(qpos[:, r : r + 3])
    f["root_quat_xyzw"].copy_(quat[:, [1, 2, 3, 0]])
    f["root_lin_vel"].copy_(qvel[:, v : v + 3])
    f["root_ang_vel"].copy_((quat_to_mat(quat) @ qvel[:, v + 3 : v + 6].double()[..., None])[..., 0])
    f["dof_pos"].copy_(qpos[:, c.qpos])
    f["dof_vel"].copy_(qvel[:, c.dof])
    f["torque"].copy_(s.actuator_force[:, c.act])
    f["body_pos"].copy_(s.xpos[:, c.bodies])
    f["body_quat_xyzw"].copy_(s.xquat[:, c.bodies][..., [1, 2, 3, 0]])
    f["contact_force"].copy_(s.cfrc_ext[:, c.bodies, 3:6])
    f["episode_time_s"].copy_(time_s)


_LIMITS = (TRUNK_CONTACT_N, MIN_BASE_HEIGHT_M, COS_MAX_TILT)
_W = [REWARD_WEIGHTS[name] for name in TERM_NAMES[3:]]


def evaluate(
    qpos: torch.Tensor,
    ee_pos: torch.Tensor,
    ee_quat: torch.Tensor,
    base_mat: torch.Tensor,
    target_pos: torch.Tensor,
    target_quat: torch.Tensor,
    trunk_force: torch.Tensor,
    action: torch.Tensor,
    last_action: torch.Tensor,
    c: TaskConstants,
    terms: torch.Tensor,
) -> torch.Tensor:
    """Tracking errors, reward parts and termination of the post-step state (kernels.evaluate):
    ``terms`` float32 (8, E) in TERM_NAMES' order; returns terminated bool (E,)."""
    pos_err = torch.linalg.vector_norm(target_pos[:, 0] - ee_pos, dim=-1)
    dot = (ee_quat * target_quat[:, 0]).sum(-1)
    ori_err = 2.0 * torch.acos(torch.clamp(dot.abs(), max=1.0))
    up = base_mat[:, 2]  # world z in the base frame
    terminated = (
        ((trunk_force * trunk_force).sum(-1) > _LIMITS[0] * _LIMITS[0])
        | (qpos[:, c.root_qpos + 2] < _LIMITS[1])
        | (up[:, 2] < _LIMITS[2])
    )
    rate = ((action.double() - last_action.double()) ** 2).sum(-1)
    parts = torch.stack(
        [
            _W[0] * torch.exp(pos_err / float(NEG_ERROR_SCALES[0])),
            _W[1] * torch.exp(ori_err / float(NEG_ERROR_SCALES[1])),
            _W[2] * (up[:, 0] ** 2 + up[:, 1] ** 2),
            _W[3] * rate,
            _W[4] * terminated.double(),
        ]
    )
    terms[0], terms[1] = pos_err, ori_err
    terms[2] = parts[0] + parts[1] + parts[2] + parts[3] + parts[4]
    terms[3:] = parts
    return terminated


_OBS_TERMS = ("dof_pos", "dof_vel", "projected_gravity", "base_ang_vel", "root_pos", "base_lin_vel", "yaw")


def observe(
    qpos: torch.Tensor,
    qvel: torch.Tensor,
    ee_pos: torch.Tensor,
    ee_quat: torch.Tensor,
    base_mat: torch.Tensor,
    target_pos: torch.Tensor,
    target_quat: torch.Tensor,
    last_action: torch.Tensor,
    c: TaskConstants,
    obs: torch.Tensor,
) -> None:
    """The observation ``obs`` float32 (E, 109), term by term as mujoco_task.OBS_LAYOUT (kernels.observe)."""
    r, v = c.root_qpos, c.root_dof
    o = {n: OBS[n] for n in _OBS_TERMS}
    obs[:, o["dof_pos"]] = qpos[:, c.qpos].float() - c.default_pos32  # the state's own precision: 0 at reset
    obs[:, o["dof_vel"]] = qvel[:, c.dof] * OBS_SCALES["dof_vel"]
    obs[:, o["projected_gravity"]] = -base_mat[:, 2]
    obs[:, o["base_ang_vel"]] = qvel[:, v + 3 : v + 6] * OBS_SCALES["base_ang_vel"]
    obs[:, OBS_COMMANDS] = 0.0
    obs[:, o["root_pos"]] = qpos[:, r : r + 3]
    obs[:, o["base_lin_vel"]] = (base_mat.transpose(1, 2) @ qvel[:, v : v + 3, None])[..., 0]
    obs[:, o["yaw"]] = torch.atan2(base_mat[:, 1, 0], base_mat[:, 0, 0])[:, None]
    obs[:, OBS["last_action"]] = last_action
    r_ee_t = quat_to_mat(ee_quat).transpose(1, 2)[:, None]  # (E, 1, 3, 3): world to EE frame
    r_t = quat_to_mat(target_quat[:, 1:])  # (E, n, 3, 3)
    p = (r_ee_t @ (target_pos[:, 1:] - ee_pos[:, None])[..., None])[..., 0] * OBS_SCALES["target_pos"]
    rot = r_ee_t @ r_t[..., :2]  # (E, n, 3, 2): the first two columns of R_ee^T R_t
    cols = rot.transpose(-1, -2).reshape(rot.shape[:2] + (6,)) * OBS_SCALES["target_rot6d"]
    obs[:, OBS_TARGETS] = torch.cat([p, cols], -1).reshape(len(qpos), -1)
