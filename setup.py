"""Packaging for moetape: one distribution and import name, with schema/record/replay as subpackages."""

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT_MODULES = {"__init__", "__main__", "cli"}


class BuildPy(build_py):
    """Ship only the package's own root modules; setup.py and friends at the root stay out."""

    def find_package_modules(self, package, package_dir):
        found = super().find_package_modules(package, package_dir)
        return [m for m in found if package != "moetape" or m[1] in ROOT_MODULES]


def read_version():
    ns = {}
    with open("__init__.py", encoding="utf-8") as f:
        for line in f:
            if line.startswith("__version__"):
                exec(line, ns)  # noqa: S102 - our own one-line version assignment
    return ns["__version__"]


setup(
    name="moetape",
    version=read_version(),
    description="Record Mixture-of-Experts robot policy rollouts to a crash-safe HDF5 log; replay them offline.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    package_dir={"moetape": "."},
    packages=["moetape", "moetape.schema", "moetape.record", "moetape.replay"],
    package_data={
        "moetape": ["py.typed"],
        "moetape.record": ["assets/*.xml", "assets/demo_policy/*"],
    },
    cmdclass={"build_py": BuildPy},
    install_requires=[
        "click>=8.0",
        "h5py>=3.6",
        "numpy>=1.20",
        "zarr>=2.16; python_version<'3.11'",
        "zarr>=3.0; python_version>='3.11'",
        "numcodecs",
        "matplotlib>=3.5",
        "imageio>=2.20",
        "imageio-ffmpeg>=0.4.7",
    ],
    extras_require={
        "record": ["torch>=1.10", "mujoco>=3.0", "numba>=0.56"],
        "rerun": ["rerun-sdk==0.41.0"],
        # Training the demo policy needs rsl-rl-lib==2.3.3 too, installed with --no-deps: it declares
        # torchvision and onnx (never imported by its PPO), which would replace the pinned CPU torch with
        # a CUDA build. What it does import beyond torch and numpy is GitPython.
        "train": ["GitPython>=3.1"],
        "sweep": [
            "dask[distributed]==2026.8.0; python_version>='3.10'",
            "pyarrow>=14; python_version>='3.10'",
        ],
        # MuJoCo Warp (--backend warp): mujoco-warp 4.0.0 runs with the mujoco 4.0.x that 'record' installs
        # and needs Python 3.11+; warp-lang brings its own CUDA runtime and also runs on the CPU.
        "gpu": ["mujoco-warp==4.0.0; python_version>='3.11'", "warp-lang==1.19.0; python_version>='3.11'"],
        "dev": ["pytest>=7", "hypothesis>=6", "ruff>=0.5", "mypy>=1.5", "import-linter>=2.0", "vermin>=1.6"],
    },
    entry_points={"console_scripts": ["moetape=moetape.cli:cli"]},
)
