"""tf_fastbat: fast adversarial training (Fast-BAT and its baselines) in TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
