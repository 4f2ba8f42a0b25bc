"""tf_fastbat: fast adversarial training (Fast-BAT and its baselines) in TensorFlow 2 / Keras 3."""

from tf_fastbat.runtime import prefer_onednn

__version__ = "0.1.0"

prefer_onednn()  # the package's one import-time effect: it must precede TensorFlow's import (see runtime.py)
