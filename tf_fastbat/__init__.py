"""tf_fastbat: fast adversarial training (Fast-BAT and its baselines) in TensorFlow 2 / Keras 3.

Importing the package changes nothing in the process. On CPUs the command-line tools use TensorFlow's Eigen
kernels unless TF_ENABLE_ONEDNN_OPTS=1 is set: oneDNN's are about 2x faster on this project's AMD CPU but TF 2.21's
corrupt the heap on some shapes (`tf_fastbat.runtime`; BUILD_NOTES.md, "CPU kernels").

`tf_fastbat.AdversarialTrainer` (tf_fastbat.trainer's) is the Keras model that trains a classifier with a method; it
is imported on first use, so that importing the package imports no TensorFlow.
"""

__version__ = "0.6.0"


def __getattr__(name: str):
    """`tf_fastbat.AdversarialTrainer`, imported when first asked for (PEP 562)."""
    if name == "AdversarialTrainer":
        from tf_fastbat.trainer import AdversarialTrainer

        return AdversarialTrainer
    raise AttributeError(f"module 'tf_fastbat' has no attribute {name!r}")
