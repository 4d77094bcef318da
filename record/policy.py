"""Load rsl_rl Mixture-of-Experts checkpoints into one torch module, without running pickled code.

A checkpoint is the rsl_rl dict ``{"model_state_dict", "optimizer_state_dict", "iter", "infos"}``,
read with ``torch.load(path, map_location=device, weights_only=True)``. The layout is recognised
from the keys of ``model_state_dict`` (DESIGN.md §5):

- plain expert: ``std (A,)``, ``actor.{0,2,4,6}.{weight,bias}`` (ELU MLP), ``critic.*``. Not an
  MoE; accepted only as an expert override (``--base_ckpt_path`` / ``--arm_ckpt_path``).
- ``"moe-a"``: ``std``, ``actor.*``, ``critic.*``, ``mlp_composer_net.{0,2,4}.*`` (gate:
  Linear-ReLU-Linear-ReLU-Linear, softmax), ``policy1.*`` (base actor), ``policy2.*`` (arm actor),
  ``policy3.*`` ... for more experts. The legacy ``act_inference`` blends ``policy1``/``policy2``
  only: the top-level ``actor.*`` (and ``critic.*``) weights are stored but never run, so they are
  ignored here too (``LoadedPolicy.notes`` says so).
- ``"moe-b"``: ``ac_base.{std,actor.*,critic.*}``, ``ac_arm.{...}``, ``obs_moe.mlp.{0,2,4}.*``
  (gate: Linear-ReLU-Linear-ReLU-Linear, softmax after). More than two experts: any other
  ``ac_<name>.actor.*`` prefixes, in name order, after base and arm.

Every size is inferred from weight shapes: obs dim = first actor layer's in-features, action dim =
``std`` length (and last actor layer's out-features), K = gate out-features, depth = the Linear
indices present (activations sit at the odd indices). Experts use ELU between layers, the gate
ReLU; no activation after the last layer. The blend is ``action = sum_k w_k * expert_k(obs)``
with ``w = softmax(gate(obs))``, as in the legacy ``act_inference``; column 0 is base, 1 is arm.
"""

from __future__ import annotations

import inspect
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from moetape.schema.errors import InputError
from moetape.schema.io import sha256_file

RSL_RL_KEYS = ("model_state_dict", "optimizer_state_dict", "iter", "infos")
"""Top-level keys of an rsl_rl checkpoint (only ``model_state_dict`` is required)."""

_GATE_PREFIX = {"moe-a": "mlp_composer_net.", "moe-b": "obs_moe.mlp."}
_LAYER_KEY = re.compile(r"^(\d+)\.(weight|bias)$")

StateDict = Dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# the module


def _mlp(shapes: Sequence[Tuple[int, int]], activation: type) -> nn.Sequential:
    """Build Linear-act-...-Linear whose state_dict keys are ``0.*, 2.*, 4.*`` like rsl_rl's."""
    layers: List[nn.Module] = []
    for i, (n_in, n_out) in enumerate(shapes):
        if i > 0:
            layers.append(activation())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class MoEPolicy(nn.Module):
    """K expert actors blended by a softmax gate, the inference path of the legacy MoE models.

    Args:
        expert_shapes: per expert, the (in, out) features of each Linear layer, in order.
        gate_shapes: the (in, out) features of each gate Linear layer, in order.
    """

    def __init__(
        self, expert_shapes: Sequence[Sequence[Tuple[int, int]]], gate_shapes: Sequence[Tuple[int, int]]
    ) -> None:
        super().__init__()
        self.experts = nn.ModuleList([_mlp(s, nn.ELU) for s in expert_shapes])
        self.gate = _mlp(gate_shapes, nn.ReLU)

    @property
    def n_experts(self) -> int:
        """K, the number of experts (gate columns)."""
        return len(self.experts)

    def get_moe_weights(self, obs: torch.Tensor) -> torch.Tensor:
        """Return the gate weights, float32 (E, K), softmax over K; obs: float32 (E, O)."""
        return torch.softmax(self.gate(obs), dim=-1)

    def blend(self, obs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Return sum_k weights[:, k] * expert_k(obs), float32 (E, A), summed in expert order."""
        action = weights[:, 0:1] * self.experts[0](obs)
        for k in range(1, len(self.experts)):
            action = action + weights[:, k : k + 1] * self.experts[k](obs)
        return action

    def act_inference(self, obs: torch.Tensor) -> torch.Tensor:
        """Return the blended action, float32 (E, A); obs: float32 (E, O)."""
        return self.blend(obs, self.get_moe_weights(obs))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.act_inference(obs)


# ---------------------------------------------------------------------------------------------
# the loaded policy


@dataclass
class LoadedPolicy:
    """An MoE policy ready to run, with what was loaded and from where.

    ``sources`` lists every file whose weights run: ``{"role": "moe"|"base"|"arm", "path",
    "sha256"}``; ``notes`` holds remarks about the checkpoint (e.g. stored but unused weights).
    """

    module: MoEPolicy
    kind: str
    obs_dim: int
    action_dim: int
    expert_names: List[str]
    sources: List[Dict[str, str]]
    device: str = "cpu"
    notes: List[str] = field(default_factory=list)

    @property
    def n_experts(self) -> int:
        """K, the number of experts."""
        return len(self.expert_names)

    def policy_step(self, obs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Run the policy once on numpy observations.

        Args:
            obs: float32 (E, O), E = envs, O = ``obs_dim``.
        Returns:
            action: float32 (E, A), the raw blended policy output.
            gate: float32 (E, K), the softmax weights that produced ``action`` (same obs, same pass).
        """
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        with torch.no_grad():
            gate = self.module.get_moe_weights(obs_t)
            action = self.module.blend(obs_t, gate)
        return (
            action.cpu().numpy().astype(np.float32, copy=False),
            gate.cpu().numpy().astype(np.float32, copy=False),
        )

    def policy_step_tensor(self, obs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run the policy once on a tensor on ``device``, without leaving it (no host round trip).

        Args:
            obs: float32 (E, O) on ``device`` (a device backend's ``obs_tensor``).
        Returns:
            action, gate: float32 (E, A) and (E, K) on ``device``, as :meth:`policy_step` computes them.
        """
        with torch.no_grad():
            gate = self.module.get_moe_weights(obs)
            action = self.module.blend(obs, gate)
        return action, gate


def check_dims(policy: LoadedPolicy, obs_dim: int, action_dim: int, env_name: str) -> None:
    """Raise InputError unless the policy's obs and action sizes equal the environment's."""
    path = policy.sources[0]["path"] if policy.sources else "policy"
    for what, got, want in (
        ("observation", policy.obs_dim, obs_dim),
        ("action", policy.action_dim, action_dim),
    ):
        if got != want:
            raise InputError(
                f"{path}: {what} size does not match env {env_name!r}; expected {want} (env), got {got} "
                f"(checkpoint). Use a checkpoint trained for this env, or pick the env it was trained on"
            )


def load_policy(
    moe_path: str,
    *,
    base_path: Optional[str] = None,
    arm_path: Optional[str] = None,
    device: str = "cpu",
) -> LoadedPolicy:
    """Load an MoE checkpoint (variant A or B), optionally replacing the base/arm expert weights.

    Args:
        moe_path: the MoE rsl_rl checkpoint (``--moe_ckpt_path``).
        base_path, arm_path: plain rsl_rl expert checkpoints whose actor replaces expert 0 / 1;
            their actor shapes must equal the MoE's expert.
        device: torch device for the module, e.g. ``"cpu"`` or ``"cuda:0"``.
    Raises:
        InputError: missing or unreadable file, unknown layout, a plain expert given as the MoE,
            an override whose shapes do not fit.
    """
    sd = _model_state_dict(moe_path, device)
    kind = detect_kind(sd)
    if kind == "expert":
        raise InputError(
            f"{moe_path}: this is a single rsl_rl expert (actor/critic), not an MoE checkpoint; "
            f"expected mlp_composer_net.* or obs_moe.mlp.* gate keys, got std/actor.*/critic.* only. "
            f"Pass it as --base_ckpt_path or --arm_ckpt_path"
        )
    if kind is None:
        raise InputError(
            f"{moe_path}: unknown checkpoint layout; expected MoE keys (std, policy1.*, policy2.*, "
            f"mlp_composer_net.* or ac_base.*, ac_arm.*, obs_moe.mlp.*), got {_key_summary(sd)}. "
            f"Pass an rsl_rl MoE checkpoint"
        )
    prefixes = _expert_prefixes(sd, kind)
    experts = [_sub(sd, p) for p in prefixes]
    gate = _sub(sd, _GATE_PREFIX[kind])
    names = expert_names(len(experts))
    sources = [{"role": "moe", "path": str(moe_path), "sha256": sha256_file(moe_path)}]
    for k, (role, path) in enumerate((("base", base_path), ("arm", arm_path))):
        if path is None:
            continue
        if k >= len(experts):
            raise InputError(
                f"{path}: the MoE has no {role} expert; expected >= {k + 1} experts, got {len(experts)}"
            )
        experts[k] = _override_actor(path, device, experts[k], role, moe_path)
        sources.append({"role": role, "path": str(path), "sha256": sha256_file(path)})
    module, obs_dim, action_dim = _build(moe_path, kind, sd, prefixes, experts, gate)
    notes = []
    if kind == "moe-a" and any(key.startswith("actor.") for key in sd):
        notes.append("actor.* weights are stored but unused: the legacy act_inference blends policy1/policy2")
    return LoadedPolicy(
        module=module.to(device).eval(),
        kind=kind,
        obs_dim=obs_dim,
        action_dim=action_dim,
        expert_names=names,
        sources=sources,
        device=str(device),
        notes=notes,
    )


def expert_names(k: int) -> List[str]:
    """Name K experts by gate column: ``["base", "arm", "expert2", ...]``."""
    return (["base", "arm"] + [f"expert{i}" for i in range(2, k)])[:k]


# ---------------------------------------------------------------------------------------------
# reading and recognising


def read_checkpoint(path: str, device: str = "cpu") -> Any:
    """Return ``torch.load(path, weights_only=True)``, translating every failure into InputError."""
    if os.path.isdir(path):
        raise InputError(
            f"{path}: is a folder; expected an rsl_rl checkpoint file (.pt). Pass the model_*.pt file inside it"
        )
    if not os.path.isfile(path):
        raise InputError(
            f"{path}: no such file; expected an rsl_rl checkpoint (.pt), got nothing. Check the path"
        )
    _check_checkpoint_head(path)
    if "weights_only" not in inspect.signature(torch.load).parameters:
        raise InputError(
            f"{path}: cannot load a checkpoint safely with this torch; expected torch >= 1.13 "
            f"(torch.load weights_only), got {torch.__version__}. Upgrade torch"
        )
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of non-torch files; the error below says more
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise InputError(
                f"{path}: refused to load objects other than tensors and plain containers; expected "
                f"weights only, got {_blocked_global(e)}. A checkpoint is data, never code: re-save "
                f"only the state dicts"
            ) from e
        raise InputError(_not_torch(path, e)) from e
    except Exception as e:  # arbitrary bytes make torch raise anything: KeyError, IndexError, ...
        raise InputError(_not_torch(path, e)) from e


# torch.save writes a zip archive (torch >= 1.6) or, in the legacy format, a pickle that starts with
# this magic number (its LONG1 opcode and bytes, after the protocol header)
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_TORCH_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[2:]


def _check_checkpoint_head(path: str) -> None:
    """Refuse, by their first bytes, files that torch.save cannot have written (a plain pickle, text)."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e}). Check the file's permissions") from e
    if head.startswith(_ZIP_MAGIC) or _LEGACY_TORCH_MAGIC in head:
        return
    if head[:1] == b"\x80":
        raise InputError(
            f"{path}: a plain Python pickle, not a torch checkpoint; expected a file written by torch.save "
            f"(a zip archive). A trajectory .pkl? Check that --moe_ckpt_path and --trajectory_file_path "
            f"are not swapped"
        )
    if not head:
        raise InputError(f"{path}: empty file; expected an rsl_rl checkpoint written by torch.save")
    raise InputError(
        f"{path}: not a torch checkpoint; expected a file written by torch.save (a zip archive), got a file "
        f"starting with {head[:8]!r}. Check the path"
    )


def _not_torch(path: str, e: BaseException) -> str:
    why = " ".join(str(e).split())[:160] or type(e).__name__
    if len(why) < len(" ".join(str(e).split())):
        why = why.rsplit(" ", 1)[0] + " ..."
    return f"{path}: not a readable torch checkpoint; expected a file written by torch.save, got an error from torch.load: {why}. Check the path"


def _blocked_global(e: BaseException) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    return f"the global {found.group(1)}" if found else type(e).__name__


def _model_state_dict(path: str, device: str) -> StateDict:
    """Read an rsl_rl checkpoint and return its ``model_state_dict`` (string keys to tensors)."""
    ckpt = read_checkpoint(path, device)
    found = sorted(str(k) for k in ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model_state_dict"), Mapping):
        raise InputError(
            f"{path}: not an rsl_rl checkpoint dict; expected keys {list(RSL_RL_KEYS)}, got {found}. "
            f"Pass the model_*.pt file the rsl_rl runner saved"
        )
    sd = ckpt["model_state_dict"]
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(
            f"{path}: model_state_dict holds non-tensor entries; expected str -> tensor, got {bad[:3]}. "
            f"Pass the model_*.pt file the rsl_rl runner saved"
        )
    return dict(sd)


def detect_kind(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Return ``"moe-a"``, ``"moe-b"``, ``"expert"`` (plain rsl_rl actor-critic) or None."""
    keys = set(sd)
    if "mlp_composer_net.0.weight" in keys and "policy1.0.weight" in keys:
        return "moe-a"
    if "obs_moe.mlp.0.weight" in keys and "ac_base.actor.0.weight" in keys:
        return "moe-b"
    if "std" in keys and "actor.0.weight" in keys:
        return "expert"
    return None


def _key_summary(sd: Mapping[str, Any]) -> str:
    prefixes = sorted({k.split(".")[0] for k in sd})
    return "[" + ", ".join(prefixes[:10]) + (", ..." if len(prefixes) > 10 else "") + "]"


def _sub(sd: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """Return the entries under ``prefix`` with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _expert_prefixes(sd: StateDict, kind: str) -> List[str]:
    """Return each expert actor's key prefix (e.g. ``policy1.``, ``ac_base.actor.``), in gate-column order."""
    if kind == "moe-a":
        n = 1
        while f"policy{n + 1}.0.weight" in sd:
            n += 1
        return [f"policy{i}." for i in range(1, n + 1)]
    extra = sorted(
        {k.split(".")[0] for k in sd if re.match(r"^ac_\w+\.actor\.0\.weight$", k)} - {"ac_base", "ac_arm"}
    )
    return [f"{p}.actor." for p in ["ac_base", "ac_arm"] + extra]


def _layer_shapes(path: str, where: str, sd: Mapping[str, torch.Tensor]) -> List[Tuple[int, int]]:
    """Check an MLP state dict (keys ``0.weight``, ``0.bias``, ``2.weight`` ...) and return its (in, out) shapes."""
    idx = set()
    for key in sd:
        m = _LAYER_KEY.match(key)
        if not m:
            raise InputError(
                f"{path}: unexpected tensor {where}{key}; expected Linear layers <i>.weight/<i>.bias, "
                f"got {key}. This layout is not supported"
            )
        idx.add(int(m.group(1)))
    want = list(range(0, 2 * len(idx), 2))
    if sorted(idx) != want:
        raise InputError(
            f"{path}: {where}* layers are not Linear-activation-Linear; expected indices {want}, "
            f"got {sorted(idx)}. This layout is not supported"
        )
    shapes: List[Tuple[int, int]] = []
    for i in want:
        w, b = sd.get(f"{i}.weight"), sd.get(f"{i}.bias")
        if w is None or b is None or w.dim() != 2 or tuple(b.shape) != (w.shape[0],):
            got = (None if w is None else tuple(w.shape), None if b is None else tuple(b.shape))
            raise InputError(
                f"{path}: {where}{i} is not a Linear layer; expected weight (out, in) and bias (out,), "
                f"got {got}. The checkpoint is damaged or of another layout"
            )
        if shapes and shapes[-1][1] != w.shape[1]:
            raise InputError(
                f"{path}: {where}{i}.weight does not chain; expected in-features {shapes[-1][1]}, "
                f"got {tuple(w.shape)}. The checkpoint is damaged"
            )
        shapes.append((int(w.shape[1]), int(w.shape[0])))
    return shapes


def _build(
    path: str, kind: str, sd: StateDict, prefixes: List[str], experts: List[StateDict], gate: StateDict
) -> Tuple[MoEPolicy, int, int]:
    """Check the sizes of all parts against each other and return (module, obs_dim, action_dim)."""
    names = expert_names(len(experts))
    expert_shapes = [_layer_shapes(path, p, e) for p, e in zip(prefixes, experts)]
    gate_shapes = _layer_shapes(path, _GATE_PREFIX[kind], gate)
    obs_dim, action_dim = expert_shapes[0][0][0], expert_shapes[0][-1][1]
    std = sd.get("std" if kind == "moe-a" else "ac_base.std")
    if std is not None and tuple(std.shape) != (action_dim,):
        raise InputError(
            f"{path}: std does not match the actor output; expected ({action_dim},), got {tuple(std.shape)}. "
            f"The checkpoint is damaged"
        )
    for k, shapes in enumerate(expert_shapes):
        if (shapes[0][0], shapes[-1][1]) != (obs_dim, action_dim):
            raise InputError(
                f"{path}: expert {names[k]!r} maps {shapes[0][0]} -> {shapes[-1][1]}; expected "
                f"{obs_dim} -> {action_dim} like {names[0]!r}, got otherwise. The experts must share obs and action sizes"
            )
    n_gate_in, k_out = gate_shapes[0][0], gate_shapes[-1][1]
    if n_gate_in != obs_dim or k_out != len(experts):
        raise InputError(
            f"{path}: the gate maps {n_gate_in} -> {k_out}; expected {obs_dim} -> {len(experts)} "
            f"(obs dim -> experts found), got {n_gate_in} -> {k_out}. The checkpoint is incomplete or of another layout"
        )
    module = MoEPolicy(expert_shapes, gate_shapes)
    for k, e in enumerate(experts):
        module.experts[k].load_state_dict(e)
    module.gate.load_state_dict(gate)
    return module, obs_dim, action_dim


def _layer_order(key: str) -> Tuple[int, int, str]:
    """Sort ``0.weight`` before ``0.bias`` before ``2.weight``; unknown keys last."""
    m = _LAYER_KEY.match(key)
    return (int(m.group(1)), 0 if m.group(2) == "weight" else 1, key) if m else (1 << 30, 0, key)


def _override_actor(path: str, device: str, current: StateDict, role: str, moe_path: str) -> StateDict:
    """Return the actor of a plain expert checkpoint, checked against the MoE expert it replaces."""
    ckpt = read_checkpoint(path, device)
    # the legacy loader also took a bare state dict; accept it too
    sd = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
    kind = detect_kind(sd) if isinstance(sd, Mapping) else None
    if kind in ("moe-a", "moe-b"):
        raise InputError(
            f"{path}: this is an MoE checkpoint, not a single {role} expert; expected std/actor.*/critic.*, "
            f"got {_key_summary(sd or {})}. Pass the expert's own rsl_rl checkpoint"
        )
    if kind != "expert" or sd is None:
        found = _key_summary(sd) if isinstance(sd, Mapping) else type(ckpt).__name__
        raise InputError(
            f"{path}: not an rsl_rl expert checkpoint; expected model_state_dict with std, actor.*, "
            f"critic.*, got {found}. Pass the {role} expert's model_*.pt"
        )
    actor = _sub(sd, "actor.")
    for key in sorted(set(current) | set(actor), key=_layer_order):
        want = tuple(current[key].shape) if key in current else None
        got = tuple(actor[key].shape) if key in actor else None
        if want != got:
            raise InputError(
                f"{path}: actor.{key} does not fit the {role} expert of {moe_path}; expected {want}, "
                f"got {got}. Pass an expert with the MoE's actor sizes"
            )
    return actor
