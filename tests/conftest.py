"""Test set-up: quiet TensorFlow with the package's CPU kernels, the shared CIFAR-10 slice path."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib  # noqa: E402

from tf_fastbat.runtime import prefer_onednn  # noqa: E402

prefer_onednn()  # before any test imports TensorFlow: the CPU kernels the tools give users (oneDNN)

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
