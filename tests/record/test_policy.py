"""MoE checkpoint loading (record/policy.py) and the demo checkpoint/trajectory (record/demo.py)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import pickletools
import shlex
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from moetape.record import demo  # noqa: E402
from moetape.record.policy import (  # noqa: E402
    check_dims,
    detect_kind,
    load_policy,
    read_checkpoint,
)
from moetape.schema.errors import InputError  # noqa: E402

OBS, ACT = 11, 5
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


# ---------------------------------------------------------------------------------------------
# synthetic checkpoints


def mlp(gen: torch.Generator, sizes: Sequence[int], prefix: str) -> Dict[str, torch.Tensor]:
    """Random Linear layers at indices 0, 2, 4 ... under prefix, sizes (in, h1, ..., out)."""
    out = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        out[f"{prefix}{2 * i}.weight"] = torch.randn(n_out, n_in, generator=gen)
        out[f"{prefix}{2 * i}.bias"] = torch.randn(n_out, generator=gen)
    return out


def expert_sd(seed: int, actor=(OBS, 16, 8, ACT), prefix: str = "") -> Dict[str, torch.Tensor]:
    """A plain rsl_rl actor-critic state dict (std, actor.*, critic.*)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {f"{prefix}std": torch.ones(actor[-1])}
    sd.update(mlp(gen, actor, f"{prefix}actor."))
    sd.update(mlp(gen, (actor[0], 16, 1), f"{prefix}critic."))
    return sd


def moe_a_sd(
    seed: int = 0, k: int = 2, obs: int = OBS, act: int = ACT, hidden=(16, 8)
) -> Dict[str, torch.Tensor]:
    """A variant-A MoE state dict: std, actor/critic, mlp_composer_net gate, policy1..K."""
    gen = torch.Generator().manual_seed(seed)
    sd = expert_sd(seed + 100, actor=(obs,) + tuple(hidden) + (act,))
    sd.update(mlp(gen, (obs, 12, 6, k), "mlp_composer_net."))
    for i in range(1, k + 1):
        sd.update(mlp(gen, (obs,) + tuple(hidden) + (act,), f"policy{i}."))
    return sd


def moe_b_sd(seed: int = 0, k: int = 2) -> Dict[str, torch.Tensor]:
    """A variant-B MoE state dict: ac_base, ac_arm (ac_expert2 ...), obs_moe.mlp gate."""
    gen = torch.Generator().manual_seed(seed)
    sd: Dict[str, torch.Tensor] = {}
    for i, name in enumerate(["base", "arm"] + [f"expert{j}" for j in range(2, k)]):
        sd.update(expert_sd(seed + 10 + i, prefix=f"ac_{name}."))
    sd.update(mlp(gen, (OBS, 12, 6, k), "obs_moe.mlp."))
    return sd


def save(path: Path, sd: Dict[str, torch.Tensor]) -> str:
    """Save sd as an rsl_rl checkpoint dict and return the path."""
    torch.save({"model_state_dict": sd, "optimizer_state_dict": {}, "iter": 7, "infos": None}, path)
    return str(path)


def ref_mlp(x: torch.Tensor, sd: Dict[str, torch.Tensor], prefix: str, act) -> torch.Tensor:
    """Reference forward of an rsl_rl MLP: Linear, act, ..., Linear."""
    n = len([k for k in sd if k.startswith(prefix) and k.endswith(".weight")])
    for i in range(n):
        x = F.linear(x, sd[f"{prefix}{2 * i}.weight"], sd[f"{prefix}{2 * i}.bias"])
        if i < n - 1:
            x = act(x)
    return x


def reference(sd: Dict[str, torch.Tensor], gate: str, experts: List[str], obs: torch.Tensor):
    """Reference (action, weights) of the legacy act_inference / get_moe_weights."""
    w = torch.softmax(ref_mlp(obs, sd, gate, F.relu), dim=-1)
    action = sum(w[:, k : k + 1] * ref_mlp(obs, sd, p, F.elu) for k, p in enumerate(experts))
    return action, w


def rand_obs(n: int = 32, dim: int = OBS, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# recognition and formulas


def test_detect_kind_plain_a_b_and_unknown():
    """detect_kind tells a plain expert, variant A, variant B and an unknown dict apart."""
    assert detect_kind(expert_sd(0)) == "expert"
    assert detect_kind(moe_a_sd()) == "moe-a"
    assert detect_kind(moe_b_sd()) == "moe-b"
    assert detect_kind({"foo.weight": torch.zeros(1)}) is None


def test_variant_a_matches_reference(tmp_path):
    """Variant A blends policy1/policy2 with the mlp_composer_net softmax, as the legacy formula."""
    sd = moe_a_sd()
    p = load_policy(save(tmp_path / "a.pt", sd))
    obs = rand_obs()
    want_a, want_w = reference(sd, "mlp_composer_net.", ["policy1.", "policy2."], obs)
    with torch.no_grad():
        assert torch.allclose(p.module.get_moe_weights(obs), want_w, atol=1e-6)
        assert torch.allclose(p.module.act_inference(obs), want_a, atol=1e-6)
    assert (p.kind, p.obs_dim, p.action_dim, p.expert_names) == ("moe-a", OBS, ACT, ["base", "arm"])
    assert any("actor.*" in n and "unused" in n for n in p.notes)


def test_variant_b_matches_reference(tmp_path):
    """Variant B blends ac_base/ac_arm actors with the obs_moe softmax, as the legacy formula."""
    sd = moe_b_sd()
    p = load_policy(save(tmp_path / "b.pt", sd))
    obs = rand_obs()
    want_a, want_w = reference(sd, "obs_moe.mlp.", ["ac_base.actor.", "ac_arm.actor."], obs)
    with torch.no_grad():
        assert torch.allclose(p.module.get_moe_weights(obs), want_w, atol=1e-6)
        assert torch.allclose(p.module.act_inference(obs), want_a, atol=1e-6)
    assert (p.kind, p.obs_dim, p.action_dim, p.notes) == ("moe-b", OBS, ACT, [])


def test_sizes_inferred_with_three_experts_and_other_depth(tmp_path):
    """Obs/action dims, K=3 and a 2-layer actor are read from the shapes, not assumed."""
    sd = moe_a_sd(k=3, obs=9, act=4, hidden=(6,))
    p = load_policy(save(tmp_path / "k3.pt", sd))
    assert (p.obs_dim, p.action_dim, p.n_experts) == (9, 4, 3)
    assert p.expert_names == ["base", "arm", "expert2"]
    obs = rand_obs(dim=9)
    want_a, _ = reference(sd, "mlp_composer_net.", ["policy1.", "policy2.", "policy3."], obs)
    with torch.no_grad():
        assert torch.allclose(p.module.act_inference(obs), want_a, atol=1e-6)


def test_variant_b_three_experts(tmp_path):
    """Variant B takes extra ac_<name> experts after base and arm, in name order."""
    sd = moe_b_sd(k=3)
    p = load_policy(save(tmp_path / "b3.pt", sd))
    obs = rand_obs()
    want_a, _ = reference(sd, "obs_moe.mlp.", ["ac_base.actor.", "ac_arm.actor.", "ac_expert2.actor."], obs)
    with torch.no_grad():
        assert torch.allclose(p.module.act_inference(obs), want_a, atol=1e-6)
    assert p.expert_names == ["base", "arm", "expert2"]


def test_policy_step_numpy_in_out(tmp_path):
    """policy_step returns float32 action (E,A) and gate (E,K) from one pass over the same obs."""
    sd = moe_b_sd()
    p = load_policy(save(tmp_path / "b.pt", sd))
    obs = rand_obs(5)
    action, gate = p.policy_step(obs.numpy())
    assert action.dtype == np.float32 and action.shape == (5, ACT)
    assert gate.dtype == np.float32 and gate.shape == (5, 2)
    np.testing.assert_allclose(gate.sum(axis=1), 1.0, atol=1e-6)
    want_a, want_w = reference(sd, "obs_moe.mlp.", ["ac_base.actor.", "ac_arm.actor."], obs)
    np.testing.assert_allclose(action, want_a.numpy(), atol=1e-6)
    np.testing.assert_allclose(gate, want_w.numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# expert overrides


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_expert_override_replaces_weights_and_is_recorded(tmp_path):
    """--base_ckpt_path replaces expert 0's actor; outputs change and sources list its sha256."""
    sd = moe_b_sd()
    moe = save(tmp_path / "moe.pt", sd)
    base_sd = expert_sd(99)
    base = save(tmp_path / "base.pt", base_sd)
    p0, p1 = load_policy(moe), load_policy(moe, base_path=base)
    obs = rand_obs()
    merged = dict(sd)
    merged.update({f"ac_base.{k}": v for k, v in base_sd.items()})
    want_a, _ = reference(merged, "obs_moe.mlp.", ["ac_base.actor.", "ac_arm.actor."], obs)
    with torch.no_grad():
        assert not torch.allclose(p0.module.act_inference(obs), p1.module.act_inference(obs))
        assert torch.allclose(p1.module.act_inference(obs), want_a, atol=1e-6)
    assert p1.sources == [
        {"role": "moe", "path": moe, "sha256": sha256(moe)},
        {"role": "base", "path": base, "sha256": sha256(base)},
    ]


def test_arm_override_variant_a(tmp_path):
    """--arm_ckpt_path replaces policy2 of a variant-A MoE."""
    sd = moe_a_sd()
    arm_sd = expert_sd(5)
    p = load_policy(save(tmp_path / "a.pt", sd), arm_path=save(tmp_path / "arm.pt", arm_sd))
    merged = dict(sd)
    merged.update({f"policy2.{k[len('actor.') :]}": v for k, v in arm_sd.items() if k.startswith("actor.")})
    obs = rand_obs()
    want_a, _ = reference(merged, "mlp_composer_net.", ["policy1.", "policy2."], obs)
    with torch.no_grad():
        assert torch.allclose(p.module.act_inference(obs), want_a, atol=1e-6)
    assert [s["role"] for s in p.sources] == ["moe", "arm"]


def test_override_shape_mismatch_names_tensor_and_shapes(tmp_path):
    """An expert whose actor shapes differ from the MoE's is refused, naming tensor and shapes."""
    moe = save(tmp_path / "moe.pt", moe_b_sd())
    arm = save(tmp_path / "arm.pt", expert_sd(1, actor=(OBS, 32, 8, ACT)))
    with pytest.raises(InputError) as e:
        load_policy(moe, arm_path=arm)
    msg = str(e.value)
    assert arm in msg and "actor.0.weight" in msg and "(16, 11)" in msg and "(32, 11)" in msg


def test_override_with_moe_file_refused(tmp_path):
    """An MoE checkpoint given as an expert override is refused with a clear message."""
    moe = save(tmp_path / "moe.pt", moe_b_sd())
    with pytest.raises(InputError, match="MoE checkpoint, not a single base expert"):
        load_policy(moe, base_path=moe)


# ---------------------------------------------------------------------------------------------
# errors


def _garbage(p: Path) -> str:
    p.write_bytes(b"this is not a checkpoint\n")
    return str(p)


def _list(p: Path) -> str:
    torch.save([1, 2, 3], p)
    return str(p)


def _no_model(p: Path) -> str:
    torch.save({"state_dict": {}}, p)
    return str(p)


def _plain(p: Path) -> str:
    return save(p, expert_sd(0))


def _unknown(p: Path) -> str:
    return save(p, {"encoder.weight": torch.zeros(2, 2)})


@pytest.mark.parametrize(
    "make, phrase",
    [
        (lambda p: str(p), "no such file"),
        (_garbage, "not a torch checkpoint"),
        (_list, "not an rsl_rl checkpoint dict"),
        (_no_model, "expected keys ['model_state_dict'"),
        (_plain, "this is a single rsl_rl expert (actor/critic), not an MoE checkpoint"),
        (_unknown, "unknown checkpoint layout"),
    ],
)
def test_bad_moe_file_raises_one_line_input_error(tmp_path, make, phrase):
    """Each bad MoE file gives a one-line InputError (a ValueError) naming the path and the problem."""
    path = make(tmp_path / "x.pt")
    with pytest.raises(InputError) as e:
        load_policy(path)
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    assert msg.startswith(f"{path}: ") and phrase in msg and "\n" not in msg


def test_torch_errors_are_chained(tmp_path):
    """A torch.load failure is translated with `from e`, keeping the cause."""
    path = tmp_path / "g.pt"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 60)  # a zip header with nothing behind it
    with pytest.raises(InputError, match="not a readable torch checkpoint") as e:
        read_checkpoint(str(path))
    assert e.value.__cause__ is not None


def test_check_dims_names_both_numbers(tmp_path):
    """check_dims refuses an env whose obs or action size differs, giving both numbers."""
    p = load_policy(save(tmp_path / "b.pt", moe_b_sd()))
    check_dims(p, OBS, ACT, "mujoco")
    with pytest.raises(InputError, match=r"observation size .* expected 109 \(env\), got 11"):
        check_dims(p, 109, ACT, "mujoco")
    with pytest.raises(InputError, match=r"action size .* expected 18 \(env\), got 5"):
        check_dims(p, OBS, 18, "mujoco")


class _System:
    """Unpickling this would run a shell command."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Exec:
    """Unpickling this would run Python code."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


@pytest.mark.parametrize("payload", ["system", "exec"])
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_pickled_code_is_refused_without_running(tmp_path, payload, writer):
    """A file holding pickled code is refused by the weights-only loader and the code never runs."""
    marker = tmp_path / "ran"
    evil = (
        _System(f"touch {shlex.quote(str(marker))}")
        if payload == "system"
        else _Exec(f"open({str(marker)!r}, 'w')")
    )
    path = tmp_path / "evil.pt"
    obj = {"model_state_dict": {"x": evil}, "optimizer_state_dict": {}, "iter": 0, "infos": None}
    if writer == "torch":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    # torch's weights-only unpickler refuses it; a plain pickle is refused before torch reads it
    refusal = "refused to load objects other than tensors" if writer == "torch" else "plain Python pickle"
    with pytest.raises(InputError, match=refusal) as e:
        load_policy(str(path))
    assert str(path) in str(e.value)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# demo checkpoint and trajectory


def test_demo_checkpoint_is_the_committed_trained_policy(tmp_path):
    """make_demo_checkpoint copies the committed trained variant-B 109/18/K=2 checkpoint byte for byte."""
    path = demo.make_demo_checkpoint(str(tmp_path / "demo.pt"))
    assert Path(path).read_bytes() == Path(demo.DEMO_CHECKPOINT).read_bytes()
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"model_state_dict", "optimizer_state_dict", "iter", "infos"}
    assert ckpt["infos"]["moetape_demo"] is True and ckpt["infos"]["trained"] is True and ckpt["iter"] > 0
    sd = ckpt["model_state_dict"]
    assert tuple(sd["ac_base.actor.0.weight"].shape) == (128, 109)
    assert tuple(sd["obs_moe.mlp.4.weight"].shape) == (2, 64)
    p = load_policy(path)
    assert (p.kind, p.obs_dim, p.action_dim, p.expert_names) == ("moe-b", 109, 18, ["base", "arm"])
    assert set(demo.demo_state_dict()) == set(sd)


def test_demo_checkpoint_missing_asset_is_one_line(tmp_path, monkeypatch):
    """Without the committed file, making the demo checkpoint fails with one line naming it and the fix."""
    monkeypatch.setattr(demo, "DEMO_CHECKPOINT", str(tmp_path / "gone.pt"))
    with pytest.raises(
        InputError, match="gone.pt: the committed demo policy file is missing.*make train-demo"
    ):
        demo.make_demo_checkpoint(str(tmp_path / "demo.pt"))
    assert not (tmp_path / "demo.pt").exists()


def test_demo_trajectory_legacy_layout(tmp_path):
    """The demo trajectory is a list of dicts of float64 arrays at 200 Hz, numpy-1.x-loadable names."""
    path = demo.make_demo_trajectory(str(tmp_path / "t.pkl"), n_episodes=5, duration_s=2.0)
    raw = Path(path).read_bytes()
    globals_ = {a for op, a, _ in pickletools.genops(raw) if op.name in ("GLOBAL", "STACK_GLOBAL")}
    assert globals_ <= {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    episodes = pickle.loads(raw)
    assert isinstance(episodes, list) and len(episodes) == 5
    for ep in episodes:
        assert ep["ee_pos"].shape == (400, 3) and ep["ee_pos"].dtype == np.float64
        assert ep["ee_axis_angle"].shape == (400, 3) and ep["ee_axis_angle"].dtype == np.float64
        np.testing.assert_allclose(np.diff(ep["t"]), 0.005)
        assert 0.45 <= ep["ee_pos"][:, 2].min() and ep["ee_pos"][:, 2].max() <= 0.75
        assert np.abs(ep["ee_pos"][:, :2]).max() < 0.25
        assert np.linalg.norm(np.diff(ep["ee_pos"], axis=0), axis=1).max() < 0.005  # < 1 m/s
    assert demo.legacy_pickle_bytes(demo.demo_episodes(n_episodes=5, duration_s=2.0)) == raw


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["make_demo_checkpoint", "make_demo_trajectory"])
def test_scripts_refuse_overwrite_without_force(tmp_path, capsys, name):
    """The demo scripts write --out, refuse an existing file, and overwrite it with --force."""
    main = _script(name).main
    out = str(tmp_path / "out")
    assert main(["--out", out] + (["--seed", "0"] if name == "make_demo_trajectory" else [])) == 0
    assert main(["--out", out]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["--out", out, "--force"]) == 0
