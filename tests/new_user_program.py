"""What a new user writes after reading the README's "Train your own Keras model": their own Sequential model with
BatchNorm, a tf.data pipeline from uint8 CIFAR-10 arrays, Fast-BAT at eps 8/255 through AdversarialTrainer with
ModelCheckpoint and EarlyStopping, the best checkpoint reloaded, an evaluation through the library, and the
classifier saved for the tools.

    python new_user_program.py PATH/TO/cifar10_subset.npz

Run by tests/test_new_user.py from an empty folder with the installed package (not the checkout) on its path; it
writes into the current directory: best.keras, classifier.keras, history.json, logits.npz, evaluation.json.
"""

import json
import sys

import keras
import numpy as np
import tensorflow as tf

import tf_fastbat
from tf_fastbat import AdversarialTrainer, evaluation, methods

# The slices of the shared subset (tests/test_new_user.py checks the same ones): training, validation (held out
# from the training images), test.
TRAIN, VALIDATION, TEST = slice(0, 1024), slice(1024, 1280), slice(0, 256)
EPOCHS, BATCH, SEED = 10, 64, 0
EPS = 8 / 255
PGD_STEPS, PGD_RESTARTS = 3, 1  # a first look, not a robustness claim


def to_unit(images, labels):
    """uint8 images -> float32 in [0, 1]; labels as int32 class indices."""
    return tf.cast(images, tf.float32) / 255.0, tf.cast(labels, tf.int32)


def pipeline(x, y, shuffle=False):
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        dataset = dataset.shuffle(len(x), seed=SEED)
    return dataset.batch(BATCH).map(to_unit, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def my_model():
    keras.utils.set_random_seed(SEED)
    return keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(16, 3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(momentum=0.9),  # short training: faster moving statistics
        keras.layers.ReLU(),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(momentum=0.9),  # short training: faster moving statistics
        keras.layers.ReLU(),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(name="features"),  # named: Keras' auto-names depend on what the process built before
        keras.layers.Dense(10, name="logits"),
    ], name="my_cifar_net")


def main(npz_path):
    with np.load(npz_path) as data:
        x_train, y_train = data["x_train"][TRAIN], data["y_train"][TRAIN]
        x_val, y_val = data["x_train"][VALIDATION], data["y_train"][VALIDATION]
        x_test, y_test = data["x_test"][TEST], data["y_test"][TEST]
    val_images = x_val.astype("float32") / 255.0

    model = my_model()
    trainer = AdversarialTrainer(model, methods.build("fast_bat", eps=EPS), seed=SEED)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    per_epoch = []  # the in-memory classifier's validation logits at the end of each epoch
    early_stopping = keras.callbacks.EarlyStopping(monitor="val_loss", patience=1)
    history = trainer.fit(
        pipeline(x_train, y_train, shuffle=True), validation_data=pipeline(x_val, y_val), epochs=EPOCHS, verbose=2,
        callbacks=[keras.callbacks.ModelCheckpoint("best.keras", monitor="val_loss", save_best_only=True),
                   early_stopping,
                   keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: per_epoch.append(
                       model(val_images, training=False).numpy()))])
    with open("history.json", "w") as f:
        json.dump({"history": history.history, "epochs": history.epoch, "max_epochs": EPOCHS,
                   "stopped_epoch": early_stopping.stopped_epoch,
                   "slices": {name: [s.start, s.stop] for name, s in
                              (("train", TRAIN), ("validation", VALIDATION), ("test", TEST))},
                   "tf_fastbat_file": tf_fastbat.__file__}, f, indent=1)

    best = keras.models.load_model("best.keras")  # the trainer whole (AdversarialTrainer is registered on import)
    best.classifier.save("classifier.keras")  # the plain classifier, for tf-fastbat-evaluate and -export
    classifier = keras.models.load_model("classifier.keras")
    np.savez("logits.npz", per_epoch=np.stack(per_epoch), in_memory=model(val_images, training=False).numpy(),
             best_reloaded=best.predict(val_images, verbose=0),
             classifier_reloaded=classifier(val_images, training=False).numpy())

    test_dataset = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(BATCH).map(to_unit)
    settings = evaluation.Settings(seed=0, options={"pgd": {"steps": PGD_STEPS, "restarts": PGD_RESTARTS}})
    result = evaluation.evaluate_model(evaluation.classifier_logits(classifier), test_dataset, None, [EPS], ["pgd"],
                                       settings, alignment=False)
    with open("evaluation.json", "w") as f:
        json.dump(result, f, indent=1)
    print(f"clean accuracy {result['clean_accuracy']:.3f}, robust {result['robust_accuracy']}")


if __name__ == "__main__":
    main(sys.argv[1])
