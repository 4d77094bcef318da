"""Stand-in of ``isaacgym.gymutil``: ``parse_sim_config`` and the wireframe helpers."""

from isaacgym import gymapi, gymdeps  # noqa: F401


def parse_sim_config(cfg, sim_params):
    """Fill ``sim_params`` from the config's ``sim`` mapping, as the real gymutil does."""
    if "physx" in cfg:
        for opt in cfg["physx"].keys():
            setattr(sim_params.physx, opt, cfg["physx"][opt])
    for opt in ("dt", "substeps", "use_gpu_pipeline", "num_client_threads"):
        if opt in cfg:
            setattr(sim_params, opt, cfg[opt])
    if "up_axis" in cfg:
        if cfg["up_axis"] not in ("y", "z"):
            raise ValueError("up_axis must be 'y' or 'z'")
        sim_params.up_axis = gymapi.UP_AXIS_Z if cfg["up_axis"] == "z" else gymapi.UP_AXIS_Y
    if "gravity" in cfg:
        sim_params.gravity = gymapi.Vec3(*cfg["gravity"])


class WireframeSphereGeometry:
    def __init__(self, radius=1.0, num_lats=8, num_lons=8, pose=None, color=None, color2=None):
        self.radius = radius


def draw_lines(geom, gym, viewer, env, pose):
    gym.add_lines(viewer, env, 0, [], [])
