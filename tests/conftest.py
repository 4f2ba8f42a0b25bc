"""Test set-up: quiet TensorFlow with the package's CPU kernels, the shared CIFAR-10 slice path."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib  # noqa: E402

from tf_fastbat.runtime import default_cpu_kernels  # noqa: E402

default_cpu_kernels()  # before any test imports TensorFlow: the CPU kernels the tools give users (Eigen)

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_SLICE = ROOT.parent / "shared" / "data" / "cifar10_subset.npz"
BUNDLED_SLICE = ROOT / "tf_fastbat" / "data" / "cifar10_slice.npz"


@pytest.fixture(scope="session")
def cifar_slice():
    """The shared real CIFAR-10 slice; a missing file is a failure, not a skip."""
    import numpy as np

    if not SHARED_SLICE.exists():
        pytest.fail(f"missing {SHARED_SLICE}: CI needs ../shared/data beside the clone (see ../shared/data/README.md)")
    with np.load(SHARED_SLICE) as archive:
        return {k: archive[k] for k in archive.files}


def run_as_script(test_file: str, *args: str, timeout: int = 300) -> None:
    """Runs a test module as a script in a fresh process (CPU only, no TF_CONFIG), for runs that need their own
    logical devices; fails with the end of its stderr."""
    import subprocess
    import sys

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    process = subprocess.run([sys.executable, os.path.abspath(test_file), *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=timeout)
    assert process.returncode == 0, process.stderr[-3000:]
