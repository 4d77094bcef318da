"""Stand-in of ``isaacgym.gymapi``: the Gym handle, sim parameters and a toy CPU physics.

See the package docstring for the behaviours reproduced on purpose.
"""

import os
import sys

import numpy as np  # noqa: E402

from isaacgym import gymdeps  # noqa: F401

SIM_PHYSX = 1
UP_AXIS_Y = 0
UP_AXIS_Z = 1
DOF_MODE_EFFORT = 3
KEY_ESCAPE = 27
KEY_V = 86
FOLLOW_POSITION = 1
IMAGE_COLOR = 0

LEGS = ("FL", "FR", "RL", "RR")
BODY_NAMES = (
    ["base"]
    + [f"{leg}_{part}" for leg in LEGS for part in ("hip", "thigh", "calf", "foot")]
    + [f"link{i}" for i in range(1, 7)]
)
DOF_NAMES = [f"{leg}_{part}_joint" for leg in LEGS for part in ("hip", "thigh", "calf")] + [
    f"joint{i}" for i in range(1, 7)
]
BASE_HEIGHT_M = 0.40
SINK_M_PER_S = 0.2  # the toy base sinks: thighs touch at 0.30 m, the base at 0.12 m
THIGH_CONTACT_BELOW_M = 0.30
BASE_CONTACT_BELOW_M = 0.12


def _log(line):
    path = os.environ.get("ISAACGYM_STANDIN_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


class _Fixed:
    """pybind objects accept only their declared attributes."""

    __slots__ = ()

    def __init__(self, **kw):
        for k in self.__slots__:
            object.__setattr__(self, k, kw.get(k, getattr(type(self), "_defaults", {}).get(k)))


class Vec3(_Fixed):
    __slots__ = ("x", "y", "z")

    def __init__(self, x=0.0, y=0.0, z=0.0):
        self.x, self.y, self.z = float(x), float(y), float(z)


class Quat(_Fixed):
    __slots__ = ("x", "y", "z", "w")

    def __init__(self, x=0.0, y=0.0, z=0.0, w=1.0):
        self.x, self.y, self.z, self.w = float(x), float(y), float(z), float(w)

    @staticmethod
    def from_euler_zyx(z, y, x):
        return Quat()


class Transform(_Fixed):
    __slots__ = ("p", "r")

    def __init__(self, p=None, r=None):
        self.p = p if p is not None else Vec3()
        self.r = r if r is not None else Quat()


class PhysXParams(_Fixed):
    __slots__ = (
        "num_threads",
        "solver_type",
        "num_position_iterations",
        "num_velocity_iterations",
        "contact_offset",
        "rest_offset",
        "bounce_threshold_velocity",
        "max_depenetration_velocity",
        "max_gpu_contact_pairs",
        "default_buffer_size_multiplier",
        "contact_collection",
        "use_gpu",
    )
    _defaults = {"num_threads": 0, "solver_type": 1, "use_gpu": False}


class SimParams(_Fixed):
    __slots__ = (
        "dt",
        "substeps",
        "up_axis",
        "gravity",
        "use_gpu_pipeline",
        "num_client_threads",
        "physx",
    )

    def __init__(self):
        self.dt = 1.0 / 60.0
        self.substeps = 2
        self.up_axis = UP_AXIS_Y
        self.gravity = Vec3(0.0, -9.8, 0.0)
        self.use_gpu_pipeline = False
        self.num_client_threads = 0
        self.physx = PhysXParams()


class PlaneParams(_Fixed):
    __slots__ = ("normal", "static_friction", "dynamic_friction", "restitution")


class AssetOptions(_Fixed):
    __slots__ = ("default_dof_drive_mode", "fix_base_link", "collapse_fixed_joints")


class CameraProperties(_Fixed):
    __slots__ = ("horizontal_fov", "far_plane", "near_plane", "height", "width", "enable_tensors")


class Tensor:
    """A gym tensor descriptor: holds the torch tensor it describes (see gymtorch)."""

    def __init__(self, tensor):
        self.tensor = tensor


class Sim:
    """A toy physics scene: E envs of one robot; what the API exposes are buffers refreshed on request."""

    def __init__(self, params):
        import torch

        self.params = params
        self.destroyed = False
        self.time = 0.0
        self.envs = []
        self.n = 0
        self.torch = torch
        self.ground = False

    def _allocate(self):
        torch = self.torch
        e, j, b = len(self.envs), len(DOF_NAMES), len(BODY_NAMES)
        self.n = e
        # the physics state
        self.root = torch.zeros(e, 13)
        self.root[:, 2] = BASE_HEIGHT_M
        self.root[:, 6] = 1.0
        for i, env in enumerate(self.envs):
            self.root[i, 0], self.root[i, 1] = env.origin.x, env.origin.y
        self.dof = torch.zeros(e, j, 2)
        self.torque = torch.zeros(e, j)
        self.bodies = torch.zeros(e, b, 13)
        self.contact = torch.zeros(e, b, 3)
        self._pose_bodies()
        # what acquire_*_tensor hands out: refreshed only by refresh_*
        self.root_buf = self.root.clone()
        self.dof_buf = self.dof.clone()
        self.bodies_buf = self.bodies.clone()
        self.contact_buf = self.contact.clone()

    def _pose_bodies(self):
        torch = self.torch
        b = len(BODY_NAMES)
        k = torch.arange(b, dtype=torch.float32)
        joint = (torch.arange(b) % len(DOF_NAMES)).long()
        q = self.dof[:, joint, 0]
        self.bodies[:, :, 0] = self.root[:, None, 0] + 0.05 * k + 0.02 * torch.sin(q)
        self.bodies[:, :, 1] = self.root[:, None, 1] + 0.02 * torch.cos(q)
        self.bodies[:, :, 2] = self.root[:, None, 2] - 0.01 * k
        half = 0.5 * q
        self.bodies[:, :, 3] = torch.sin(half)  # xyzw: a rotation about x by the joint angle
        self.bodies[:, :, 4] = 0.0
        self.bodies[:, :, 5] = 0.0
        self.bodies[:, :, 6] = torch.cos(half)
        self.bodies[:, :, 7:] = self.root[:, None, 7:]
        z = self.root[:, 2]
        self.contact.zero_()
        for i, name in enumerate(BODY_NAMES):
            if name.endswith("foot"):
                self.contact[:, i, 2] = 30.0
            elif name.endswith("thigh"):
                self.contact[:, i, 2] = torch.where(z < THIGH_CONTACT_BELOW_M, 5.0, 0.0)
            elif name == "base":
                self.contact[:, i, 2] = torch.where(z < BASE_CONTACT_BELOW_M, 10.0, 0.0)

    def simulate(self):
        dt = float(self.params.dt)
        vel = self.dof[:, :, 1] + dt * (self.torque - 5.0 * self.dof[:, :, 1])
        self.dof[:, :, 1] = vel
        self.dof[:, :, 0] += dt * vel
        self.root[:, 7:10] = self.root.new_tensor([0.05, 0.0, -SINK_M_PER_S])
        self.root[:, 0:3] += dt * self.root[:, 7:10]
        self.root[:, 2].clamp_(min=0.05)
        self._pose_bodies()
        self.time += dt


class Env:
    def __init__(self, sim, index, origin):
        self.sim, self.index, self.origin = sim, index, origin


class Asset:
    def __init__(self, path):
        self.path = path


class Viewer:
    def __init__(self):
        self.draws = 0
        self.destroyed = False


class Gym:
    """The gym handle (``acquire_gym()``); only the calls the UMI-on-Legs env makes."""

    # ------------------------------------------------------------------ sim and viewer life
    def create_sim(self, compute_device, graphics_device, physics_engine, params):
        return Sim(params)

    def prepare_sim(self, sim):
        sim._allocate()
        return True

    def destroy_sim(self, sim):
        if sim.destroyed:
            sys.stderr.write("Segmentation fault (core dumped): destroy_sim on a destroyed sim\n")
            sys.stderr.flush()
            os._exit(139)
        sim.destroyed = True
        _log("destroy_sim")

    def create_viewer(self, sim, props):
        if not os.environ.get("DISPLAY"):
            sys.stderr.write("*** Failed to create viewer\n")
            return None
        return Viewer()

    def destroy_viewer(self, viewer):
        if viewer.destroyed:
            sys.stderr.write("Segmentation fault (core dumped): destroy_viewer twice\n")
            sys.stderr.flush()
            os._exit(139)
        viewer.destroyed = True
        _log("destroy_viewer")

    def subscribe_viewer_keyboard_event(self, viewer, key, action):
        if viewer is None:
            raise AttributeError("'NoneType' viewer")

    def viewer_camera_look_at(self, viewer, env, pos, target):
        pass

    def query_viewer_has_closed(self, viewer):
        after = os.environ.get("ISAACGYM_STANDIN_CLOSE_VIEWER_AFTER")
        return after is not None and viewer.draws >= int(after)

    def draw_viewer(self, viewer, sim, render_collision=True):
        viewer.draws += 1
        _log("draw_viewer")

    def poll_viewer_events(self, viewer):
        pass

    def sync_frame_time(self, sim):
        pass

    def step_graphics(self, sim):
        pass

    def fetch_results(self, sim, wait):
        pass

    def clear_lines(self, viewer):
        pass

    def add_lines(self, viewer, env, n, vertices, colors):
        pass

    def create_camera_sensor(self, env, props):
        return 0

    def attach_camera_to_body(self, cam, env, actor, transform, mode):
        pass

    def render_all_camera_sensors(self, sim):
        pass

    def get_camera_image(self, sim, env, cam, kind):
        return np.zeros((4, 16), np.uint8)

    # ------------------------------------------------------------------ scene building
    def add_ground(self, sim, params):
        sim.ground = True

    def load_asset(self, sim, root, filename, options):
        return Asset(os.path.join(root, filename))

    def get_asset_dof_count(self, asset):
        return len(DOF_NAMES)

    def get_asset_rigid_body_count(self, asset):
        return len(BODY_NAMES)

    def get_asset_rigid_body_names(self, asset):
        return list(BODY_NAMES)

    def get_asset_dof_names(self, asset):
        return list(DOF_NAMES)

    def create_env(self, sim, lower, upper, per_row):
        i = len(sim.envs)
        per_row = max(int(per_row), 1)
        spacing = 2.0 * upper.x
        env = Env(sim, i, Vec3((i % per_row) * spacing, (i // per_row) * spacing, 0.0))
        sim.envs.append(env)
        return env

    def get_env_origin(self, env):
        return env.origin

    def create_actor(self, env, asset, pose, name, group, filter, segmentation=0):
        return 0

    def get_actor_rigid_body_names(self, env, actor):
        return list(BODY_NAMES)

    def get_actor_dof_names(self, env, actor):
        return list(DOF_NAMES)

    def find_actor_rigid_body_handle(self, env, actor, name):
        return BODY_NAMES.index(name) if name in BODY_NAMES else -1

    def get_actor_handle(self, env, index):
        return 0

    def get_env(self, sim, index):
        return sim.envs[int(index)]

    def get_env_count(self, sim):
        return len(sim.envs)

    def get_sim_params(self, sim):
        return sim.params

    def get_sim_time(self, sim):
        return sim.time

    # ------------------------------------------------------------------ tensors
    def acquire_actor_root_state_tensor(self, sim):
        return Tensor(sim.root_buf)

    def acquire_dof_state_tensor(self, sim):
        return Tensor(sim.dof_buf.view(-1, 2))

    def acquire_rigid_body_state_tensor(self, sim):
        return Tensor(sim.bodies_buf.view(-1, 13))

    def acquire_net_contact_force_tensor(self, sim):
        return Tensor(sim.contact_buf.view(-1, 3))

    def refresh_actor_root_state_tensor(self, sim):
        sim.root_buf.copy_(sim.root)

    def refresh_dof_state_tensor(self, sim):
        sim.dof_buf.copy_(sim.dof)

    def refresh_rigid_body_state_tensor(self, sim):
        sim.bodies_buf.copy_(sim.bodies)

    def refresh_net_contact_force_tensor(self, sim):
        sim.contact_buf.copy_(sim.contact)

    def set_actor_root_state_tensor_indexed(self, sim, root, ids, n):
        idx = ids.tensor.long()[:n]
        sim.root[idx] = root.tensor.view(-1, 13)[idx]

    def set_dof_state_tensor_indexed(self, sim, dof, ids, n):
        idx = ids.tensor.long()[:n]
        sim.dof[idx] = dof.tensor.view(sim.n, -1, 2)[idx]

    def set_dof_actuation_force_tensor(self, sim, torque):
        sim.torque.copy_(torque.tensor.view(sim.n, -1))

    def simulate(self, sim):
        if sim.destroyed:
            raise RuntimeError("simulate on a destroyed sim")
        sim.simulate()


def acquire_gym():
    return Gym()
