# isort: skip_file
"""Stand-in of ``isaacgym.gymtorch``: torch views of the gym's state buffers."""

from isaacgym import gymdeps  # noqa: F401

import torch  # noqa: E402  (after isaacgym, as the real module)


def wrap_tensor(gym_tensor):
    """The torch tensor behind a gym tensor descriptor (shares its memory)."""
    return gym_tensor.tensor


def unwrap_tensor(tensor):
    """A gym tensor descriptor of a torch tensor."""
    from isaacgym.gymapi import Tensor

    if not isinstance(tensor, torch.Tensor):
        raise TypeError("unwrap_tensor expects a torch.Tensor")
    return Tensor(tensor)
