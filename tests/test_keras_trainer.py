"""AdversarialTrainer as a Keras user meets it: the README's example, every method through compile and fit, every
kind of Keras model and label, Keras' callbacks and saving, and one-line refusals of what it cannot honour."""

import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from tf_fastbat import AdversarialTrainer, methods, optim, trainer
from tf_fastbat.errors import UsageError

EPS = 8 / 255
SHAPE, CLASSES, N = (8, 8, 3), 3, 16


def data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, *SHAPE)).astype("float32"), rng.integers(0, CLASSES, n)


def dense_model(seed=0, softmax=False):
    """Functional, no BatchNorm: training and inference forwards agree."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    hidden = keras.layers.Dense(6, activation="tanh")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax" if softmax else None)(hidden))


def optimizer_for(name, learning_rate=0.05):
    """Keras' SGD, but for elle_a's two steps per batch, which need torch's SGD rule (optim.CoupledSGD)."""
    if name == "elle_a":
        return optim.CoupledSGD(learning_rate, momentum=0.9)
    return keras.optimizers.SGD(learning_rate, momentum=0.9)


def flat(variables):
    return np.concatenate([np.asarray(v, np.float64).ravel() for v in variables])


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ---- the README ------------------------------------------------------------------------------------------------

def test_the_readme_example_trains_checkpoints_and_reloads(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## Train your own Keras model.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    fitted, x = namespace["trainer"], namespace["x_train"][:64]
    assert int(fitted.optimizer.iterations.numpy()) == 2 * 15  # 1,800 training images in batches of 128, 2 epochs
    assert not (tmp_path / "backup").exists()  # BackupAndRestore removes its backup when fit ends
    reloaded = keras.models.load_model(tmp_path / "trainer.keras")  # the last epoch's checkpoint
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), fitted.predict(x, verbose=0))
    classifier = keras.models.load_model(tmp_path / "classifier.keras")
    np.testing.assert_array_equal(classifier.predict(x, verbose=0), fitted.predict(x, verbose=0))
    assert int(reloaded.optimizer.iterations.numpy()) == 30 and reloaded.method.name == "fast_bat"


def test_the_public_name_is_the_trainer_and_importing_the_package_imports_no_tensorflow():
    import tf_fastbat

    assert tf_fastbat.AdversarialTrainer is trainer.AdversarialTrainer
    code = "import sys, tf_fastbat; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---- every method ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", methods.NAMES)
def test_every_method_fits_through_keras(name):
    x, y = data()
    fitted = AdversarialTrainer(dense_model(), methods.build(name, eps=EPS))
    fitted.compile(optimizer=optimizer_for(name), metrics=["accuracy"])
    before = flat(fitted.classifier.trainable_variables)
    history = fitted.fit(x, y, batch_size=8, epochs=2, verbose=0).history
    assert int(fitted.optimizer.iterations.numpy()) == 4
    assert all(np.isfinite(history[key]).all() and len(history[key]) == 2 for key in ("loss", "accuracy"))
    assert np.linalg.norm(flat(fitted.classifier.trainable_variables) - before) > 1e-4
    written = {"fgsm_pgi": "delta", "elle_a": "count", "liet": "label_indicative"}.get(name)
    if written:  # the method's state moved from its zeros
        assert np.abs(fitted.method_state[written].numpy()).max() > 0


@pytest.mark.parametrize("name", ["fgsm_pgi", "nu_at", "elle_a", "liet", "fast_bat"])
def test_the_first_fit_step_is_the_library_gradient(name):
    """One step of fit (SGD, learning rate 1, no momentum) moves the weights by exactly the gradients that
    `method.gradients` gives at the start of training, with the trainer's noise U[-eps, eps] from (seed, step 0)."""
    hparams = {"optimizer_steps_per_batch": 1} if name == "elle_a" else {}
    method = methods.build(name, eps=EPS, **hparams)
    x, y = data()
    seed = 7
    noise = tf.random.stateless_uniform(x.shape, tf.constant([seed, 0], tf.int64), -EPS, EPS)
    grads, _ = method.gradients(dense_model(), x, y, noise)
    fitted = AdversarialTrainer(dense_model(), method, seed=seed)
    fitted.compile(optimizer=keras.optimizers.SGD(1.0))
    before = flat(fitted.classifier.trainable_variables)
    fitted.fit(x, y, batch_size=N, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(before - flat(fitted.classifier.trainable_variables), flat(grads), rtol=1e-5,
                               atol=1e-7)


def test_the_standard_method_is_keras_own_training():
    """The `standard` method through the trainer equals the classifier compiled with Keras' cross-entropy."""
    x, y = data(32)
    ours = AdversarialTrainer(dense_model(), methods.build("standard", eps=0.0))
    ours.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    ours.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    theirs = dense_model()
    theirs.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    theirs.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(flat(ours.classifier.weights), flat(theirs.weights), rtol=1e-5, atol=1e-6)


# ---- models and labels ------------------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="tests")
class SubclassedClassifier(keras.Model):
    def __init__(self, classes=CLASSES, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.flatten, self.hidden, self.out = (keras.layers.Flatten(), keras.layers.Dense(6, activation="tanh"),
                                               keras.layers.Dense(classes))

    def call(self, x, training=False):
        return self.out(self.hidden(self.flatten(x)))

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}


def classifier(kind):
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Flatten(), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(CLASSES)]
    if kind == "sequential_with_input":
        return keras.Sequential([keras.Input(SHAPE), *layers])
    if kind.startswith("sequential_without_input"):
        return keras.Sequential(layers)
    if kind == "subclassed":
        return SubclassedClassifier()
    return dense_model()


@pytest.mark.parametrize("kind", ["functional", "sequential_with_input", "sequential_without_input",
                                  "sequential_without_input_shape_given", "subclassed"])
def test_every_kind_of_keras_model_trains_saves_and_reloads(kind, tmp_path):
    x, y = data()
    given = {"input_shape": SHAPE} if kind.endswith("shape_given") else {}
    fitted = AdversarialTrainer(classifier(kind), methods.build("fast_at", eps=EPS), **given)
    assert fitted.built == (kind in ("functional", "sequential_with_input") or bool(given))
    fitted.compile(optimizer=keras.optimizers.SGD(0.05))
    fitted.fit(x, y, batch_size=8, epochs=1, verbose=0)
    fitted.save(tmp_path / "trainer.keras")
    reloaded = keras.models.load_model(tmp_path / "trainer.keras")
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), fitted.predict(x, verbose=0))
    logits = fitted.classifier(x, training=False).numpy()  # eagerly: the same up to float rounding
    np.testing.assert_allclose(fitted.predict(x, verbose=0), logits, rtol=1e-6, atol=1e-6)


def test_sparse_column_and_one_hot_labels_train_identically():
    x, y = data()
    labels = {"sparse": y, "column": y[:, None], "one_hot": np.eye(CLASSES, dtype="float32")[y],
              "dataset_one_hot": None}
    weights, evaluations = {}, {}
    for kind, given in labels.items():
        fitted = AdversarialTrainer(dense_model(), methods.build("fast_at", eps=EPS))
        fitted.compile(optimizer=keras.optimizers.SGD(0.05))
        if given is None:
            batches = tf.data.Dataset.from_tensor_slices((x, np.eye(CLASSES, dtype="float32")[y])).batch(8)
            fitted.fit(batches, epochs=1, verbose=0)
        else:
            fitted.fit(x, given, batch_size=8, epochs=1, shuffle=False, verbose=0)
            evaluations[kind] = fitted.evaluate(x, given, verbose=0, return_dict=True)
        weights[kind] = flat(fitted.classifier.weights)
    for kind in labels:
        np.testing.assert_array_equal(weights[kind], weights["sparse"])
    for kind in evaluations:
        assert evaluations[kind] == evaluations["sparse"]


def test_metrics_are_measured_on_the_training_input():
    """A compiled metric sees the logits of x_adv: the cross-entropy it reports is the logged loss, above the clean
    cross-entropy; in evaluate it is the clean one."""
    x, y = data()
    fitted = AdversarialTrainer(dense_model(), methods.build("fast_at", eps=EPS))
    fitted.compile(optimizer=keras.optimizers.SGD(0.0),
                   metrics=[keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="ce")])
    logs = fitted.fit(x, y, batch_size=N, epochs=1, verbose=0).history
    clean = float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, fitted.classifier(x))))
    assert logs["ce"][0] == pytest.approx(logs["loss"][0], rel=1e-6)
    assert logs["ce"][0] > clean + 1e-3
    assert fitted.evaluate(x, y, verbose=0, return_dict=True)["ce"] == pytest.approx(clean, rel=1e-5)


# ---- refusals ---------------------------------------------------------------------------------------------------

def test_a_softmax_classifier_is_refused_as_evaluation_flags_it():
    from tf_fastbat.attacks.autoattack.checks import check_range_output

    x, _ = data()
    softmax = dense_model(softmax=True)
    with pytest.raises(UsageError) as error:
        AdversarialTrainer(softmax, methods.build("fast_at", eps=EPS))
    assert one_line(error).startswith("classifier: its outputs are probabilities")
    logits = dense_model()
    assert check_range_output(lambda images: softmax(images), x, N)[1] is not None  # evaluation's check agrees
    assert check_range_output(lambda images: logits(images), x, N)[1] is None
    AdversarialTrainer(dense_model(), methods.build("fast_at", eps=EPS))  # logits pass


@pytest.mark.parametrize("loss,accepted", [
    (None, True), ("sparse_categorical_crossentropy", True),
    (keras.losses.SparseCategoricalCrossentropy(from_logits=True), True),
    (keras.losses.CategoricalCrossentropy(from_logits=True), True),
    ("mse", False), (keras.losses.SparseCategoricalCrossentropy(), False),
    (keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1), False)])
def test_compile_takes_only_a_cross_entropy_loss(loss, accepted):
    fitted = AdversarialTrainer(dense_model(), methods.build("fast_bat", eps=EPS))
    if accepted:
        fitted.compile(optimizer="sgd", loss=loss)
        return
    with pytest.raises(UsageError) as error:
        fitted.compile(optimizer="sgd", loss=loss)
    assert one_line(error).startswith("loss=") and "fast_bat" in one_line(error)


def test_weights_and_bad_labels_are_refused_in_one_line_before_any_step():
    x, y = data()
    fitted = AdversarialTrainer(dense_model(), methods.build("fast_at", eps=EPS))
    with pytest.raises(UsageError, match=r"^loss_weights: not supported"):
        fitted.compile(optimizer="sgd", loss_weights=[1.0])
    with pytest.raises(UsageError, match=r"^weighted_metrics: not supported"):
        fitted.compile(optimizer="sgd", weighted_metrics=["accuracy"])
    fitted.compile(optimizer="sgd")
    soft = np.full((N, CLASSES), 1 / CLASSES, "float32")
    cases = {"sample_weight": dict(x=x, y=y, sample_weight=np.ones(N)),
             "class_weight": dict(x=x, y=y, class_weight={0: 1.0, 1: 2.0, 2: 1.0}),
             "y: rows": dict(x=x, y=soft), "y: class indices": dict(x=x, y=y + CLASSES),
             "sample_weight: not supported": dict(x=tf.data.Dataset.from_tensor_slices((x, y, np.ones(N))).batch(8))}
    for start, arguments in cases.items():
        with pytest.raises(UsageError) as error:
            fitted.fit(epochs=1, verbose=0, **arguments)
        assert one_line(error).startswith(start), start
    assert int(fitted.optimizer.iterations.numpy()) == 0


def test_what_fit_cannot_count_is_asked_for_in_one_line():
    x, y = data()
    unbuilt = AdversarialTrainer(classifier("sequential_without_input"), methods.build("fast_at", eps=EPS))
    unbuilt.compile(optimizer="sgd")
    with pytest.raises(UsageError, match=r"^input_shape: "):
        unbuilt.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat().as_numpy_iterator(),
                    steps_per_epoch=2, verbose=0)
    endless = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    nu_at = AdversarialTrainer(dense_model(), methods.build("nu_at", eps=EPS))
    nu_at.compile(optimizer="sgd")
    with pytest.raises(UsageError, match=r"^steps_per_epoch: nu_at follows the epoch"):
        nu_at.fit(endless, epochs=1, verbose=0)
    nu_at.fit(endless, epochs=1, steps_per_epoch=2, verbose=0)
    per_example = AdversarialTrainer(dense_model(), methods.build("fgsm_pgi", eps=EPS))
    per_example.compile(optimizer="sgd")
    positions = tf.data.Dataset.from_tensor_slices((x, y, np.arange(N))).batch(8)
    with pytest.raises(UsageError, match=r"^num_examples: fgsm_pgi keeps state per training example"):
        per_example.fit(positions, epochs=1, verbose=0)
    counted = AdversarialTrainer(dense_model(), methods.build("fgsm_pgi", eps=EPS), num_examples=N)
    counted.compile(optimizer="sgd")
    counted.fit(positions, epochs=1, verbose=0)
    with pytest.raises(UsageError, match=r"^fgsm_pgi keeps state per training example: train on arrays, or on"):
        counted.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0)


# ---- callbacks and saving ----------------------------------------------------------------------------------------

def state_of(fitted):
    """Classifier weights, optimizer variables and the method's state, as one vector each."""
    return (flat(fitted.classifier.weights), flat(fitted.optimizer.variables),
            flat([v.numpy() for v in fitted.method_state.values()]))


def test_model_checkpoint_whole_and_weights_only(tmp_path):
    x, y = data()
    fitted = AdversarialTrainer(dense_model(), methods.build("fgsm_pgi", eps=EPS), num_examples=N)
    assert [v.path for v in fitted.weights][-2:] == ["method_state/delta", "method_state/momentum"]  # before fit
    fitted.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    callbacks = [keras.callbacks.ModelCheckpoint(tmp_path / "whole.keras"),
                 keras.callbacks.ModelCheckpoint(tmp_path / "only.weights.h5", save_weights_only=True)]
    fitted.fit(x, y, batch_size=8, epochs=2, callbacks=callbacks, verbose=0)
    reloaded = keras.models.load_model(tmp_path / "whole.keras")
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), fitted.predict(x, verbose=0))
    fresh = AdversarialTrainer(dense_model(seed=1), methods.build("fgsm_pgi", eps=EPS), num_examples=N)
    fresh.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    fresh.load_weights(tmp_path / "only.weights.h5")
    for restored in (reloaded, fresh):
        for got, want in zip(state_of(restored), state_of(fitted)):
            np.testing.assert_array_equal(got, want)
    assert np.abs(fitted.method_state["delta"].numpy()).max() > 0
    # It continues: one more epoch of the reloaded trainer equals one more of the original.
    for model in (fitted, reloaded):
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_array_equal(flat(reloaded.classifier.weights), flat(fitted.classifier.weights))


def test_early_stopping_csv_logger_and_tensorboard(tmp_path):
    x, y = data(32)
    fitted = AdversarialTrainer(dense_model(), methods.build("fast_at", eps=EPS))
    fitted.compile(optimizer=keras.optimizers.SGD(0.05), metrics=["accuracy"])
    first = []
    callbacks = [keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: first.append(
                     flat(fitted.classifier.weights)) if epoch == 0 else None),
                 keras.callbacks.EarlyStopping(monitor="val_loss", min_delta=1e9, patience=2,
                                               restore_best_weights=True),
                 keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
                 keras.callbacks.TensorBoard(str(tmp_path / "tensorboard"), histogram_freq=1)]
    history = fitted.fit(x, y, batch_size=8, epochs=6, validation_split=0.25, callbacks=callbacks, verbose=0)
    epochs = len(history.history["loss"])
    assert epochs == 3  # no epoch after the first improves by min_delta: stopped after `patience` more
    np.testing.assert_array_equal(flat(fitted.classifier.weights), first[0])  # the best (first) epoch's weights
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert len(rows) == 1 + epochs
    assert {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(rows[0].split(","))
    logged = [float(row.split(",")[rows[0].split(",").index("val_loss")]) for row in rows[1:]]
    np.testing.assert_allclose(logged, history.history["val_loss"], rtol=1e-6)
    for folder in ("train", "validation"):
        assert list((tmp_path / "tensorboard" / folder).glob("events.out.tfevents.*"))


class Interrupt(keras.callbacks.Callback):
    """Raises at the start of epoch `epoch`, as a crash would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


@pytest.mark.parametrize("name", ["fgsm_pgi", "elle_a"])
def test_backup_and_restore_resumes_as_an_unbroken_run(name, tmp_path):
    """Interrupted at the start of epoch 2 of 3 and rerun (a new process would build a new trainer): the weights,
    the optimizer's state and the method's state end as after an unbroken fit."""
    x, y = data()

    def run(callbacks, seed=0):
        fitted = AdversarialTrainer(dense_model(seed), methods.build(name, eps=EPS), seed=3)
        fitted.compile(optimizer=optim.CoupledSGD(0.05, momentum=0.9))
        fitted.fit(x, y, batch_size=8, epochs=3, shuffle=False, callbacks=callbacks, verbose=0)
        return fitted

    unbroken = run([])
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        run([backup, Interrupt(2)])
    resumed = run([keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))], seed=1)
    assert int(resumed.optimizer.iterations.numpy()) == 6
    for got, want in zip(state_of(resumed), state_of(unbroken)):
        np.testing.assert_array_equal(got, want)
    assert np.abs(state_of(unbroken)[2]).max() > 0


def test_the_architecture_example_trains_a_keras_model():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    code = re.search(r"## Training a Keras model with a method.*?```python\n(.*?)```", text, re.S).group(1)
    namespace = {}
    exec(compile(code, "ARCHITECTURE.md", "exec"), namespace)
    fitted = namespace["trainer"]
    assert int(fitted.optimizer.iterations.numpy()) == 8
    assert fitted.method_state["delta"].shape == (64, 8, 8, 3)  # sized from the arrays fit got
    assert np.abs(fitted.method_state["delta"].numpy()).max() > 0


def test_evaluate_honours_sample_weights():
    x, y = data()
    weights = np.linspace(0.1, 2.0, N).astype("float32")
    fitted = AdversarialTrainer(dense_model(), methods.build("fast_at", eps=EPS))
    fitted.compile(optimizer="sgd")
    result = fitted.evaluate(x, y, sample_weight=weights, batch_size=5, verbose=0, return_dict=True)
    logits = fitted.classifier(x, training=False)
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits).numpy()
    correct = (np.argmax(logits, axis=1) == y).astype(np.float64)
    assert result["loss"] == pytest.approx(np.sum(weights * cross_entropy) / np.sum(weights), rel=1e-5)
    assert result["accuracy"] == pytest.approx(np.sum(weights * correct) / np.sum(weights), rel=1e-5)
