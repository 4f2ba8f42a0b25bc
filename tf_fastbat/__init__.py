"""tf_fastbat: fast adversarial training (Fast-BAT and its baselines) in TensorFlow 2 / Keras 3.

Importing the package changes nothing in the process. On CPUs, TensorFlow's oneDNN kernels are 2-5x faster here
than its default on non-Intel CPUs; the command-line tools turn them on, and library users can with
`tf_fastbat.runtime.prefer_onednn()` (or TF_ENABLE_ONEDNN_OPTS=1) before importing TensorFlow.
"""

__version__ = "0.6.0"
