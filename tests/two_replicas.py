"""The subprocess side of the method-state distribution tests: the same fit on one device and on 2 logical CPUs
under MirroredStrategy, recording weights, state and whether the replicas' copies of the state agree."""

from typing import Callable, Dict

import numpy as np


def state_runs(build_trainer: Callable, steps: int) -> Dict[str, np.ndarray]:
    """`steps` single-step epochs of `build_trainer()` (called inside each strategy's scope) on each strategy.

    Keys: <label>/weights [steps, n], <label>/state/<name> [steps, ...], <label>/agree [steps], replicas; label is
    single or mirrored. Call first thing in a fresh process: it creates the logical devices.
    """
    import keras
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from test_distribution import training_batches

    results = {}
    for label, strategy in (("single", tf.distribute.get_strategy()),
                            ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
        with strategy.scope():
            trainer = build_trainer()
        weights, agree = [], []
        states = {name: [] for name in trainer.method_state}

        def record(epoch, logs):
            weights.append(np.concatenate([np.asarray(v.numpy(), np.float64).ravel()
                                           for v in trainer.classifier.weights]))
            copies_agree = True
            for name, variable in trainer.method_state.items():
                states[name].append(np.asarray(variable.numpy()).copy())
                copies = [np.asarray(c.numpy()) for c in getattr(variable, "values", [variable])]
                copies_agree &= all(np.array_equal(copies[0], other) for other in copies)
            agree.append(copies_agree)

        trainer.fit(training_batches(), epochs=steps, steps_per_epoch=1, verbose=0,
                    callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=record)])
        results.update({f"{label}/weights": np.stack(weights), f"{label}/agree": np.array(agree),
                        **{f"{label}/state/{name}": np.stack(values) for name, values in states.items()}})
        results["replicas"] = np.array(strategy.num_replicas_in_sync)
    return results
