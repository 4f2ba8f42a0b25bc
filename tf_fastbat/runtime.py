"""Process-wide TensorFlow settings that only take effect if made before TensorFlow is imported."""

from __future__ import annotations

import os
import sys

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def prefer_onednn() -> bool:
    """Default TF_ENABLE_ONEDNN_OPTS to 1 unless the user set it; True if oneDNN kernels will be used.

    TensorFlow enables its oneDNN CPU kernels only on some Intel CPUs; elsewhere (the AMD EPYC CI machine) the
    fallback Eigen kernels make backward convolutions 2-5x slower, and every method here is backward-bound
    (BUILD_NOTES.md, "CPU kernels"). GPUs are unaffected. TF_ENABLE_ONEDNN_OPTS=0 keeps TensorFlow's default.
    """
    if "tensorflow" not in sys.modules:
        os.environ.setdefault(ONEDNN_VARIABLE, "1")
    return os.environ.get(ONEDNN_VARIABLE) == "1"
