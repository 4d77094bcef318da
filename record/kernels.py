"""The MuJoCo backend's per-step work, compiled with numba: each job one loop over the envs.

At tens of envs each job (a target lookup, the frame rows, the observation, the terms) is small: as
numpy calls on (E, 3)-sized arrays its cost is the calls, not the arithmetic, and copying a field out
of E MjData objects is E copies. Here each job is one call, and MjData fields are read and written
by address (``gather``, ``set_ctrl``). The task's formulas are DESIGN.md §5's (constants in
moetape.record.mujoco_task); tests check the results against MuJoCo's own functions.

Every constant comes in as an argument: numba's on-disk cache (``cache=True``, so only the first run
compiles, a few seconds) is keyed on this file, not on the modules that define the task's constants.
Quaternions are wxyz (MuJoCo's order) unless a name says xyzw; rotation matrices map body to world.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")


@intrinsic
def _float64_pointer(typingctx: Any, address: Any) -> Any:
    """The float64 pointer at ``address``, an int64 from ``ndarray.ctypes.data``."""
    sig = types.CPointer(types.float64)(types.int64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@_jit
def gather(addresses: np.ndarray, sizes: np.ndarray, out: np.ndarray) -> None:
    """Copy into row e of ``out`` (E, sum(sizes)) float64, end to end, ``sizes[f]`` float64 from each
    ``addresses[e, f]`` (int64 (E, F)): a few fields of every env's MjData in one call. The caller
    keeps the arrays at those addresses alive (see moetape.record.mujoco_backend._EnvFields)."""
    for e in range(addresses.shape[0]):
        col = 0
        for f in range(addresses.shape[1]):
            src = _float64_pointer(addresses[e, f])
            for i in range(sizes[f]):
                out[e, col + i] = src[i]
            col += sizes[f]


@_jit
def set_ctrl(
    action: np.ndarray, default_pos: np.ndarray, scale: float, addresses: np.ndarray, columns: np.ndarray
) -> None:
    """PD targets ``default_pos + scale * action`` (E, n) into ``ctrl[columns]`` of every env, whose
    ctrl array is at ``addresses[e, 0]`` (int64 (E, 1); the caller keeps those arrays alive)."""
    for e in range(action.shape[0]):
        ctrl = _float64_pointer(addresses[e, 0])
        for j in range(len(columns)):
            ctrl[columns[j]] = default_pos[j] + scale * float(action[e, j])


@_jit
def _quat_to_mat(w: float, x: float, y: float, z: float, out: np.ndarray) -> None:
    """Write the rotation matrix (3, 3) of the unit quaternion (w, x, y, z) into ``out``."""
    out[0, 0] = w * w + x * x - y * y - z * z
    out[0, 1] = 2.0 * (x * y - w * z)
    out[0, 2] = 2.0 * (x * z + w * y)
    out[1, 0] = 2.0 * (x * y + w * z)
    out[1, 1] = w * w - x * x + y * y - z * z
    out[1, 2] = 2.0 * (y * z - w * x)
    out[2, 0] = 2.0 * (x * z - w * y)
    out[2, 1] = 2.0 * (y * z + w * x)
    out[2, 2] = w * w - x * x - y * y + z * z


@_jit
def interpolate_poses(
    rows: np.ndarray,
    n_samples: int,
    dt_s: float,
    episodes: np.ndarray,
    times_s: np.ndarray,
    pos: np.ndarray,
    quat: np.ndarray,
) -> None:
    """Target poses of trajectory ``episodes[e]`` at ``times_s[e, k]`` into ``pos[e, k]``, ``quat[e, k]``.

    ``rows`` float64 (N * (T + 1), 7): each episode's T samples (pos, wxyz quat) and its last sample
    once more (see moetape.record.targets.TargetTable). Linear interpolation between the two
    neighbouring samples, the quaternion normalised; times before 0 hold the first sample, past the
    end the last. ``pos`` (E, K, 3) and ``quat`` (E, K, 4) may be float32 or float64.
    """
    last = n_samples - 1.0
    for e in range(len(episodes)):
        base = episodes[e] * (n_samples + 1)
        for k in range(times_s.shape[1]):
            f = min(max(times_s[e, k] / dt_s, 0.0), last)
            i = int(f)
            w = f - i
            r0, r1 = rows[base + i], rows[base + i + 1]
            for c in range(3):
                pos[e, k, c] = r0[c] + (r1[c] - r0[c]) * w
            q0 = r0[3] + (r1[3] - r0[3]) * w
            q1 = r0[4] + (r1[4] - r0[4]) * w
            q2 = r0[5] + (r1[5] - r0[5]) * w
            q3 = r0[6] + (r1[6] - r0[6]) * w
            norm = math.sqrt(q0 * q0 + q1 * q1 + q2 * q2 + q3 * q3)
            quat[e, k, 0], quat[e, k, 1] = q0 / norm, q1 / norm
            quat[e, k, 2], quat[e, k, 3] = q2 / norm, q3 / norm


@_jit
def frame_targets(pos: np.ndarray, quat: np.ndarray, out_pos: np.ndarray, out_quat_xyzw: np.ndarray) -> None:
    """Spread looked-up targets over frame rows: ``pos`` (E, R * M, 3) and ``quat`` (E, R * M, 4)
    wxyz, row r's M first, into ``out_pos`` (R, E, M, 3) and ``out_quat_xyzw`` (R, E, M, 4)."""
    n_rows, n_envs, m = out_pos.shape[0], out_pos.shape[1], out_pos.shape[2]
    for r in range(n_rows):
        for e in range(n_envs):
            for j in range(m):
                k = r * m + j
                for c in range(3):
                    out_pos[r, e, j, c] = pos[e, k, c]
                    out_quat_xyzw[r, e, j, c] = quat[e, k, c + 1]
                out_quat_xyzw[r, e, j, 3] = quat[e, k, 0]


@_jit
def refresh_poses(
    state: np.ndarray,
    ee: np.ndarray,
    site_rmul: np.ndarray,
    root_qpos: int,
    ee_pos: np.ndarray,
    ee_quat: np.ndarray,
    base_mat: np.ndarray,
) -> None:
    """From ``state`` (E, nq + nv) and ``ee`` (E, 7) = EE site position and EE body quaternion: the EE
    pose (site quaternion = body quaternion * ``site_rmul``'s fixed factor, a (4, 4) right product)
    and the base's rotation matrix."""
    r = root_qpos + 3
    for e in range(state.shape[0]):
        for c in range(3):
            ee_pos[e, c] = ee[e, c]
        for c in range(4):
            ee_quat[e, c] = (
                ee[e, 3] * site_rmul[0, c]
                + ee[e, 4] * site_rmul[1, c]
                + ee[e, 5] * site_rmul[2, c]
                + ee[e, 6] * site_rmul[3, c]
            )
        _quat_to_mat(state[e, r], state[e, r + 1], state[e, r + 2], state[e, r + 3], base_mat[e])


@_jit
def frame_rows(
    states: np.ndarray,
    derived: np.ndarray,
    nq: int,
    nu: int,
    root_qpos: int,
    root_dof: int,
    qpos_cols: np.ndarray,
    dof_cols: np.ndarray,
    actuators: np.ndarray,
    body_rows: np.ndarray,
    episode_time_s: np.ndarray,
    sim_dt_s: float,
    out_root_pos: np.ndarray,
    out_root_quat_xyzw: np.ndarray,
    out_root_lin_vel: np.ndarray,
    out_root_ang_vel: np.ndarray,
    out_dof_pos: np.ndarray,
    out_dof_vel: np.ndarray,
    out_torque: np.ndarray,
    out_body_pos: np.ndarray,
    out_body_quat_xyzw: np.ndarray,
    out_contact_force: np.ndarray,
    out_episode_time_s: np.ndarray,
) -> None:
    """Fill R frame rows (the ``out_`` arrays, (R, E, ...)) of E envs.

    ``states`` (R, E, nq + nv): the state before each row's substep. ``derived`` (R, E, W): what
    MuJoCo derived during it, per env end to end: actuator_force (nu), then xpos (n, 3), xquat
    (n, 4) and cfrc_ext (n, 6) of a span of n bodies, of which ``body_rows`` are the robot's.
    ``actuators``: the actuator of each joint. Row r is at ``episode_time_s[e] + r * sim_dt_s``.
    The free joint's angular velocity is in the body frame: rotated to the world frame.
    """
    mat = np.empty((3, 3))
    r, v = root_qpos, nq + root_dof
    n_span = (derived.shape[2] - nu) // 13
    at_pos, at_quat, at_force = nu, nu + 3 * n_span, nu + 7 * n_span
    for k in range(states.shape[0]):
        for e in range(states.shape[1]):
            s, d = states[k, e], derived[k, e]
            for c in range(3):
                out_root_pos[k, e, c] = s[r + c]
                out_root_quat_xyzw[k, e, c] = s[r + 4 + c]
                out_root_lin_vel[k, e, c] = s[v + c]
            out_root_quat_xyzw[k, e, 3] = s[r + 3]
            _quat_to_mat(s[r + 3], s[r + 4], s[r + 5], s[r + 6], mat)
            for c in range(3):
                out_root_ang_vel[k, e, c] = mat[c, 0] * s[v + 3] + mat[c, 1] * s[v + 4] + mat[c, 2] * s[v + 5]
            for j in range(len(qpos_cols)):
                out_dof_pos[k, e, j] = s[qpos_cols[j]]
                out_dof_vel[k, e, j] = s[nq + dof_cols[j]]
                out_torque[k, e, j] = d[actuators[j]]
            for b in range(len(body_rows)):
                row = body_rows[b]
                for c in range(3):
                    out_body_pos[k, e, b, c] = d[at_pos + 3 * row + c]
                    out_body_quat_xyzw[k, e, b, c] = d[at_quat + 4 * row + 1 + c]
                    out_contact_force[k, e, b, c] = d[at_force + 6 * row + 3 + c]  # force after torque
                out_body_quat_xyzw[k, e, b, 3] = d[at_quat + 4 * row]
            out_episode_time_s[k, e] = episode_time_s[e] + k * sim_dt_s


@_jit
def evaluate(
    qpos: np.ndarray,
    ee_pos: np.ndarray,
    ee_quat: np.ndarray,
    base_mat: np.ndarray,
    target_pos: np.ndarray,
    target_quat: np.ndarray,
    trunk_force: np.ndarray,
    action: np.ndarray,
    last_action: np.ndarray,
    root_qpos: int,
    limits: np.ndarray,
    weights: np.ndarray,
    neg_error_scales: np.ndarray,
    terms: np.ndarray,
    terminated: np.ndarray,
) -> None:
    """Tracking errors, reward parts and termination of the post-step state, per env.

    ``limits``: (trunk contact force N, minimum base height m, cos of the maximum tilt).
    ``weights``: the 5 reward parts' weights (pos, ori, upright, action rate, termination);
    ``neg_error_scales``: the 2 tracking rewards' scales, negated: reward = weight * exp(error / it).
    ``terms`` (8, E): rows pos error (m), ori error (rad), total reward, then the 5 parts
    (mujoco_task.TERM_NAMES' order). ``terminated`` bool (E,).
    """
    for e in range(qpos.shape[0]):
        dx = target_pos[e, 0, 0] - ee_pos[e, 0]
        dy = target_pos[e, 0, 1] - ee_pos[e, 1]
        dz = target_pos[e, 0, 2] - ee_pos[e, 2]
        pos_err = math.sqrt(dx * dx + dy * dy + dz * dz)
        dot = 0.0
        for c in range(4):
            dot += ee_quat[e, c] * target_quat[e, 0, c]
        ori_err = 2.0 * math.acos(min(abs(dot), 1.0))
        up_x, up_y, up_z = base_mat[e, 2, 0], base_mat[e, 2, 1], base_mat[e, 2, 2]  # world z, base frame
        f = trunk_force[e]
        term = (
            f[0] * f[0] + f[1] * f[1] + f[2] * f[2] > limits[0] * limits[0]
            or qpos[e, root_qpos + 2] < limits[1]
            or up_z < limits[2]
        )
        rate = 0.0
        for j in range(action.shape[1]):
            da = float(action[e, j]) - float(last_action[e, j])
            rate += da * da
        p0 = weights[0] * math.exp(pos_err / neg_error_scales[0])
        p1 = weights[1] * math.exp(ori_err / neg_error_scales[1])
        p2 = weights[2] * (up_x * up_x + up_y * up_y)
        p3 = weights[3] * rate
        p4 = weights[4] * term
        terms[0, e], terms[1, e], terms[2, e] = pos_err, ori_err, p0 + p1 + p2 + p3 + p4
        terms[3, e], terms[4, e], terms[5, e], terms[6, e], terms[7, e] = p0, p1, p2, p3, p4
        terminated[e] = term


@_jit
def observe(
    qpos: np.ndarray,
    qvel: np.ndarray,
    ee_pos: np.ndarray,
    ee_quat: np.ndarray,
    base_mat: np.ndarray,
    target_pos: np.ndarray,
    target_quat: np.ndarray,
    last_action: np.ndarray,
    default_pos: np.ndarray,
    qpos_cols: np.ndarray,
    dof_cols: np.ndarray,
    root_qpos: int,
    root_dof: int,
    starts: np.ndarray,
    scales: np.ndarray,
    obs: np.ndarray,
) -> None:
    """Build the observation ``obs`` float32 (E, O) term by term (mujoco_task.OBS_LAYOUT).

    ``starts``: first column of dof_pos, dof_vel, projected_gravity, base_ang_vel, the targets, the
    commands (6 zeros), root_pos, base_lin_vel, yaw, last_action. ``scales``: dof_vel, base_ang_vel,
    target position, target 6D rotation. Targets 1.. of ``target_pos``/``target_quat`` (E, 1 + n, .)
    are observed: each as its position in the EE frame, then the first two columns of R_ee^T R_t.
    """
    r_ee, r_t = np.empty((3, 3)), np.empty((3, 3))
    r, v = root_qpos, root_dof
    for e in range(qpos.shape[0]):
        o = obs[e]
        for j in range(len(qpos_cols)):
            o[starts[0] + j] = qpos[e, qpos_cols[j]] - default_pos[j]
            o[starts[1] + j] = qvel[e, dof_cols[j]] * scales[0]
        m = base_mat[e]
        for c in range(3):
            o[starts[2] + c] = -m[2, c]  # R^T (0, 0, -1)
            o[starts[3] + c] = qvel[e, v + 3 + c] * scales[1]  # free joint: already body frame
            o[starts[6] + c] = qpos[e, r + c]
            o[starts[7] + c] = m[0, c] * qvel[e, v] + m[1, c] * qvel[e, v + 1] + m[2, c] * qvel[e, v + 2]
        for c in range(6):
            o[starts[5] + c] = 0.0
        o[starts[8]] = math.atan2(m[1, 0], m[0, 0])
        for j in range(last_action.shape[1]):
            o[starts[9] + j] = last_action[e, j]
        _quat_to_mat(ee_quat[e, 0], ee_quat[e, 1], ee_quat[e, 2], ee_quat[e, 3], r_ee)
        col = starts[4]
        for t in range(1, target_pos.shape[1]):
            q = target_quat[e, t]
            _quat_to_mat(q[0], q[1], q[2], q[3], r_t)
            for i in range(3):  # row i of R_ee^T times (p_t - p_ee), R_t[:, 0], R_t[:, 1]
                p = 0.0
                c0 = 0.0
                c1 = 0.0
                for k in range(3):
                    p += r_ee[k, i] * (target_pos[e, t, k] - ee_pos[e, k])
                    c0 += r_ee[k, i] * r_t[k, 0]
                    c1 += r_ee[k, i] * r_t[k, 1]
                o[col + i] = p * scales[2]
                o[col + 3 + i] = c0 * scales[3]
                o[col + 6 + i] = c1 * scales[3]
            col += 9
