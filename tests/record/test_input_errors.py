"""`moetape record`'s errors name the real cause: device strings, folders, swapped files, every missing input."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("mujoco")

from moetape.cli import cli  # noqa: E402
from moetape.record.demo import make_demo_checkpoint, make_demo_trajectory  # noqa: E402
from moetape.record.policy import read_checkpoint  # noqa: E402
from moetape.record.runner import resolve_device  # noqa: E402
from moetape.schema.errors import InputError  # noqa: E402


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    ckpt, traj = str(d / "moe.pt"), str(d / "traj.pkl")
    make_demo_checkpoint(ckpt)
    make_demo_trajectory(traj, seed=0)
    return ckpt, traj


def record_error(tmp_path, ckpt, traj, *extra):
    """Run `moetape record` and return its one stderr line, checking exit 1 and no traceback."""
    out = tmp_path / "run"
    args = ["record", "--moe_ckpt_path", ckpt, "--trajectory_file_path", traj, "--num_steps", "2"]
    r = CliRunner().invoke(cli, args + ["--out", str(out), "-q", *extra])
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert not out.exists()
    return lines[0]


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU", "cuda:"])
def test_bad_device_string_is_named_as_a_device(demo_files, tmp_path, device):
    """A malformed --device is reported as a bad device name, not as a broken checkpoint."""
    ckpt, traj = demo_files
    line = record_error(tmp_path, ckpt, traj, "--device", device)
    assert f"--device {device}: not a device name" in line and "cpu, cuda or cuda:N" in line
    assert "checkpoint" not in line


def test_cpu_device_needs_no_cuda():
    """--device cpu resolves to cpu; an omitted device falls back to cpu with a notice when there is no CUDA."""
    notices = []
    assert resolve_device("cpu", notice=notices.append) == "cpu"
    with pytest.raises(InputError, match="not a device name"):
        resolve_device("gpu:0", notice=notices.append)


def test_folder_given_as_checkpoint_says_folder(demo_files, tmp_path):
    """A folder passed as the checkpoint (or trajectory) says it is a folder, not 'no such file'."""
    ckpt, traj = demo_files
    folder = tmp_path / "ckpts"
    folder.mkdir()
    line = record_error(tmp_path, str(folder), traj, "--device", "cpu")
    assert "is a folder" in line and "no such file" not in line and "--moe_ckpt_path" in line
    line = record_error(tmp_path, ckpt, str(folder), "--device", "cpu")
    assert "is a folder" in line and "--trajectory_file_path" in line
    with pytest.raises(InputError, match="is a folder"):
        read_checkpoint(str(folder))


def test_trajectory_pickle_as_checkpoint_suggests_swapped_paths(demo_files, tmp_path):
    """A trajectory .pkl given as the checkpoint is called a plain pickle, whole words, and the swap is suggested."""
    ckpt, traj = demo_files
    line = record_error(tmp_path, traj, traj, "--device", "cpu")
    assert "plain Python pickle, not a torch checkpoint" in line and "swapped" in line
    assert "add_" not in line


def test_text_file_as_checkpoint_has_no_bare_number(demo_files, tmp_path):
    """A text file as checkpoint says what the file starts with, not torch's bare error number."""
    ckpt, traj = demo_files
    txt = tmp_path / "notes.txt"
    txt.write_text("hello\n")
    line = record_error(tmp_path, str(txt), traj, "--device", "cpu")
    assert "not a torch checkpoint" in line and "(101)" not in line and "hello" in line


def test_pickle_with_a_global_names_it_whole(tmp_path):
    """A torch file holding a non-tensor global names the global in full, not a cut-off torch hint."""
    import numpy as np
    import torch

    p = tmp_path / "np.pt"
    torch.save({"a": np.arange(3)}, p)
    with pytest.raises(InputError) as e:
        read_checkpoint(str(p))
    msg = str(e.value)
    assert "_reconstruct." in msg and "add_" not in msg and "\n" not in msg


def test_legacy_torch_format_still_loads(tmp_path):
    """A checkpoint in torch's legacy (non-zip) format passes the file-type check and loads."""
    import torch

    p = tmp_path / "legacy.pt"
    torch.save({"a": torch.ones(2)}, p, _use_new_zipfile_serialization=False)
    assert float(read_checkpoint(str(p))["a"].sum()) == 2.0


def test_every_missing_input_named_at_once(tmp_path):
    """The README's record example with both files missing names both, with their options."""
    line = record_error(tmp_path, str(tmp_path / "model.pt"), str(tmp_path / "traj.pkl"), "--device", "cpu")
    assert "model.pt (--moe_ckpt_path): no such file" in line
    assert "traj.pkl (--trajectory_file_path): no such file" in line


def test_robot_mujoco_refuses_is_one_line(demo_files, tmp_path):
    """A robot MJCF that MuJoCo refuses gives MuJoCo's reason on one line, naming the file."""
    ckpt, traj = demo_files
    bad = tmp_path / "bad.xml"
    bad.write_text('<mujoco><worldbody><body><geom type="nonsense"/></body></worldbody></mujoco>')
    line = record_error(tmp_path, ckpt, traj, "--device", "cpu", "--robot", str(bad))
    assert "bad.xml: MuJoCo cannot load it" in line and "nonsense" in line and "line 1" in line
