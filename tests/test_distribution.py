"""tf.distribute against one device: MirroredStrategy on 2 logical CPUs and MultiWorkerMirroredStrategy with 2
worker processes on loopback reach one device's weights on the same global batches.

Each run happens in a subprocess (logical devices and TF_CONFIG must be set before TensorFlow initializes); the
subprocesses run this file as a script and write their weights to .npz files that the tests compare.

BatchNormalization: a replica normalizes with its own batch's statistics unless the layer is synchronized (Keras
documents `synchronized=True` for exactly this), so the BN model here has its BN layer switched to synchronized by
`tf_fastbat.distribution.synchronize_batch_norm`; a second model has no BN at all.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import Dict, List

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # end to end: training subprocesses on logical devices and loopback workers
GLOBAL_BATCH = 8
STEPS = 3
EPS = 8.0 / 255.0
# A small attack step keeps delta* off the constraint boundary and a small lambda makes the implicit term large:
# a distributed run that dropped or mis-scaled the cross term would be far off (checked below).
FAST_BAT = {"eps": EPS, "attack_lr": 0.2, "lmbda": 0.05}
MODELS = ("plain", "syncbn")


# ----------------------------------------------------------------------------------------------------------------
# The subprocess side.

def build_classifier(kind: str):
    """A tiny CNN: "plain" has no BatchNormalization; "syncbn" has the models' BatchNorm (torch's running
    variance, reweighted per forward from each replica's thread), switched to global-batch statistics by
    tf_fastbat.distribution.synchronize_batch_norm; "bn" leaves it per replica."""
    import keras

    from tf_fastbat import distribution
    from tf_fastbat.models.layers import batch_norm

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", use_bias=kind == "plain")(inputs)
    if kind in ("syncbn", "bn"):
        h = batch_norm()(h)
    h = keras.layers.Activation("softplus")(h)
    h = keras.layers.Conv2D(4, 3, strides=2, padding="same")(h)
    h = keras.layers.Activation("softplus")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    if kind == "syncbn":
        assert distribution.synchronize_batch_norm(model) == 1
    return model


def training_batches():
    """STEPS global batches of GLOBAL_BATCH images in [0, 1] and labels, the same in every process."""
    import tensorflow as tf

    rng = np.random.default_rng(7)
    x = rng.uniform(0, 1, (STEPS * GLOBAL_BATCH, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 3, STEPS * GLOBAL_BATCH).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH, drop_remainder=True).repeat()


def train(strategy, kind: str, method: str, hparams: Dict) -> List[np.ndarray]:
    """The weights (BatchNorm's moving averages included) after each of STEPS steps of AdversarialTrainer.fit."""
    import keras

    from tf_fastbat import methods
    from tf_fastbat.trainer import assemble, sgd

    with strategy.scope():
        classifier = build_classifier(kind)
        trainer = assemble(classifier, methods.build(method, **hparams), sgd(0.5, 0.9, 5e-4), seed=11)
    snapshots = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: snapshots.append(
        np.concatenate([v.numpy().ravel() for v in classifier.weights])))
    trainer.fit(training_batches(), epochs=STEPS, steps_per_epoch=1, callbacks=[record], verbose=0)
    return snapshots


def run_mirrored(out: str) -> None:
    """Two logical CPUs: one-device and MirroredStrategy runs of the same training, for both models."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = {"replicas": np.array(mirrored.num_replicas_in_sync)}
    for kind in MODELS:
        results[f"{kind}/single"] = np.stack(train(tf.distribute.get_strategy(), kind, "fast_bat", FAST_BAT))
        results[f"{kind}/mirrored"] = np.stack(train(mirrored, kind, "fast_bat", FAST_BAT))
    results["bn/mirrored"] = np.stack(train(mirrored, "bn", "fast_bat", FAST_BAT))
    results["plain/single_first_order"] = np.stack(
        train(tf.distribute.get_strategy(), "plain", "fast_bat", {**FAST_BAT, "lmbda": 1e9}))
    np.savez(out, **results)


def run_single(out: str, kind: str) -> None:
    """One process, one device: the reference for the multi-worker run."""
    import tensorflow as tf

    np.savez(out, weights=np.stack(train(tf.distribute.get_strategy(), kind, "fast_bat", FAST_BAT)))


def run_worker(out: str, kind: str) -> None:
    """One of the MultiWorkerMirroredStrategy workers (TF_CONFIG set by the parent)."""
    from tf_fastbat import distribution

    strategy = distribution.strategy_for("multi_worker")
    weights = np.stack(train(strategy, kind, "fast_bat", FAST_BAT))
    np.savez(out, weights=weights, replicas=np.array(strategy.num_replicas_in_sync))


# ----------------------------------------------------------------------------------------------------------------
# The pytest side.

def environment(extra: Dict[str, str] = None) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    env.update(extra or {})
    return env


def spawn(mode: str, *args: str, extra_env: Dict[str, str] = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), mode, *args], cwd=ROOT,
                            env=environment(extra_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> None:
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"subprocess timed out: {stderr[-3000:]}")
    assert process.returncode == 0, stderr[-3000:]


def free_ports(count: int) -> List[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def assert_same_training(distributed: np.ndarray, single: np.ndarray) -> None:
    """Every step's weights agree within float32 reduction-order tolerance."""
    initial_scale = np.abs(single).max()
    np.testing.assert_allclose(distributed, single, rtol=1e-4, atol=1e-5 * initial_scale)


@pytest.fixture(scope="module")
def mirrored_runs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mirrored") / "runs.npz")
    finish(spawn("mirrored", out))
    with np.load(out) as archive:
        return {k: archive[k] for k in archive.files}


@pytest.mark.parametrize("kind", MODELS)
def test_mirrored_strategy_on_two_devices_matches_one_device(mirrored_runs, kind):
    """Fast-BAT under MirroredStrategy (2 replicas, 4 examples each) = one device on the 8-example batch: after the
    first step (the gradient: the momentum buffer starts at zero) and after three."""
    assert int(mirrored_runs["replicas"]) == 2
    assert_same_training(mirrored_runs[f"{kind}/mirrored"], mirrored_runs[f"{kind}/single"])


def test_the_comparison_sees_the_implicit_term(mirrored_runs):
    """Without the implicit term (lambda -> infinity) the weights move far more than the tolerance used above."""
    with_term, without = mirrored_runs["plain/single"], mirrored_runs["plain/single_first_order"]
    assert np.abs(with_term - without).max() > 100 * 1e-5 * np.abs(with_term).max()


def test_per_replica_batch_norm_statistics_do_change_the_result(mirrored_runs):
    """Why BN must be synchronized: with per-replica statistics the same model ends far outside the tolerance."""
    difference = np.abs(mirrored_runs["bn/mirrored"] - mirrored_runs["syncbn/single"]).max()
    assert difference > 100 * 1e-5 * np.abs(mirrored_runs["syncbn/single"]).max()


@pytest.mark.parametrize("kind", ["syncbn"])
def test_multi_worker_strategy_with_two_workers_matches_one_worker(tmp_path, kind):
    """Two MultiWorkerMirroredStrategy workers on loopback (TF_CONFIG) reach one worker's weights after 3 steps."""
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = [spawn("worker", str(tmp_path / f"worker{i}.npz"), kind,
                     extra_env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
               for i in range(2)]
    single = spawn("single", str(tmp_path / "single.npz"), kind)
    for process in workers + [single]:
        finish(process)
    reference = np.load(tmp_path / "single.npz")["weights"]
    for i in range(2):
        with np.load(tmp_path / f"worker{i}.npz") as result:
            assert int(result["replicas"]) == 2
            assert_same_training(result["weights"], reference)


if __name__ == "__main__":
    mode, target, *rest = sys.argv[1:]
    {"mirrored": run_mirrored, "single": run_single, "worker": run_worker}[mode](target, *rest)
