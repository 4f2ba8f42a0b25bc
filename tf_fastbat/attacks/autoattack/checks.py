"""AutoAttack's sanity checks on the evaluated model (reference: fra31/auto-attack, autoattack/checks.py).

Each check returns a warning string (or None): randomized model, probabilities instead of logits, gradients
computed inside the forward pass (dynamic defence), too few classes for the targeted/DLR attacks, zero
gradients (reported by APGD), and Square Attack beating the white-box attacks.
"""

from __future__ import annotations

import os
import sys
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tf_fastbat.attacks.autoattack._utils import LogitsFn, logits_numpy

# Python-level TF/Keras entry points that compute gradients; calling one during inference means the model
# optimises at test time (the TF analogue of the reference's trace of torch.autograd.grad / backward).
_GRADIENT_ENTRY_POINTS = frozenset({"gradient", "gradients", "gradients_v2", "jacobian", "batch_jacobian",
                                    "apply_gradients", "minimize", "value_and_gradients_function"})
_FRAMEWORK_DIRS = (os.sep + "tensorflow" + os.sep, os.sep + "keras" + os.sep, os.sep + "tf_keras" + os.sep)


def check_randomized(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, batch_size: int, n: int = 5,
                     alpha: float = 1e-4) -> Optional[str]:
    """Warn if n forward passes disagree: different accuracy, or L2-normalised logits differing by > alpha."""
    outputs, n_correct = [], []
    for _ in range(n):
        logits = logits_numpy(logits_fn, x, batch_size).astype(np.float64)
        n_correct.append(int((logits.argmax(axis=1) == y).sum()))
        outputs.append(logits / (np.linalg.norm(logits, axis=1, keepdims=True) + 1e-10))
    max_diff = max((np.linalg.norm(outputs[a] - outputs[b], axis=1).max()
                    for a in range(n) for b in range(a + 1, n)), default=0.0)
    if len(set(n_correct)) > 1 or max_diff > alpha:
        return ("it seems to be a randomized defense (two forward passes differ)! Please use "
                "version='rand' (APGD with EOT).")
    return None


def check_range_output(logits_fn: LogitsFn, x: np.ndarray, batch_size: int,
                       alpha: float = 1e-5) -> Tuple[int, Optional[str]]:
    """Number of classes, and a warning if the outputs look like probabilities (in [0, 1], rows sum to 1)."""
    output = logits_numpy(logits_fn, x, batch_size)
    looks_like_probabilities = (output.max() < 1.0 + alpha and output.min() > -alpha
                                and bool(np.all(np.abs(output.sum(axis=-1) - 1.0) < alpha)))
    message = None
    if looks_like_probabilities:
        message = ("it seems that the output is a probability distribution, please be sure that the logits are "
                   "used!")
    return output.shape[-1], message


def _graph_computes_gradients(graph) -> bool:
    """True if a traced/loaded graph (or any function in its library) contains gradient-tape ops."""
    graph_def = graph.as_graph_def()
    names = [node.name for node in graph_def.node]
    names += [node.name for function in graph_def.library.function for node in function.node_def]
    return any(name.startswith(("gradients/", "gradient_tape/")) or "/gradient_tape/" in name for name in names)


def check_dynamic(logits_fn: LogitsFn, x: np.ndarray) -> Optional[str]:
    """Warn if computing the logits computes gradients (an optimisation loop at inference time)."""
    calls = 0

    def tracer(frame, event, arg):
        nonlocal calls
        code = frame.f_code
        if (event == "call" and code.co_name in _GRADIENT_ENTRY_POINTS
                and any(d in code.co_filename for d in _FRAMEWORK_DIRS)):
            calls += 1
        return None

    graph = getattr(logits_fn, "graph", None)  # a ConcreteFunction, e.g. a SavedModel signature
    if graph is not None and hasattr(graph, "as_graph_def") and _graph_computes_gradients(graph):
        calls += 1
    was_eager = tf.config.functions_run_eagerly()
    previous_trace = sys.gettrace()
    tf.config.run_functions_eagerly(True)  # so that tf.function bodies run as Python and can be traced
    sys.settrace(tracer)
    try:
        logits_fn(tf.constant(x, tf.float32))
    finally:
        sys.settrace(previous_trace)
        tf.config.run_functions_eagerly(was_eager)
    if calls:
        return ("it seems to be a dynamic defense (gradients are computed during inference)! The evaluation "
                "with AutoAttack might be insufficient.")
    return None


def check_n_classes(n_classes: int, attacks_to_run: Sequence[str], apgd_targets: int,
                    fab_targets: int) -> Optional[str]:
    """Warn if the DLR losses cannot be used or more target classes are requested than exist."""
    messages = []
    if "apgd-dlr" in attacks_to_run or "apgd-t" in attacks_to_run:
        if n_classes <= 2:
            messages.append(f"with only {n_classes} classes it is not possible to use the DLR loss!")
        elif n_classes == 3 and "apgd-t" in attacks_to_run:
            messages.append(f"with only {n_classes} classes it is not possible to use the targeted DLR loss!")
        elif "apgd-t" in attacks_to_run and apgd_targets + 1 > n_classes:
            messages.append(f"it seems that more target classes ({apgd_targets}) than possible "
                            f"({n_classes - 1}) are used in APGD-T!")
    if "fab-t" in attacks_to_run and fab_targets + 1 > n_classes:
        messages.append(f"it seems that more target classes ({fab_targets}) than possible ({n_classes - 1}) "
                        "are used in FAB-T!")
    return " ".join(messages) if messages else None


def check_square_sr(robust_accuracy: Dict[str, float], alpha: float = 0.002) -> Optional[str]:
    """Warn if Square lowered robust accuracy by > alpha below the others (keys: "clean" and the attacks run)."""
    if "square" not in robust_accuracy or len(robust_accuracy) <= 2:
        return None
    others = min(v for k, v in robust_accuracy.items() if k != "square")
    if robust_accuracy["square"] < others - alpha:
        return (f"Square Attack has decreased the robust accuracy of {others - robust_accuracy['square']:.2%}. "
                "This might indicate that the robustness evaluation using AutoAttack is unreliable.")
    return None
