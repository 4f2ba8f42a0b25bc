"""The serving graph of an exported classifier: `serving_default` (float32 images in [0, 1]) and
`predict_images_bytes` (JPEG/PNG bytes decoded and resized in the graph), both returning logits, probabilities and
classes, with in-graph checks that give a client a clear message instead of a silent misread."""

from __future__ import annotations

from typing import Dict, Tuple

import tensorflow as tf

from tf_fastbat.data.pipeline import _center_crop as center_crop
from tf_fastbat.serving.protocol import (BYTES_INPUT, BYTES_SIGNATURE, IMAGES_INPUT, IMAGES_SIGNATURE, JPEG_MAGIC,
                                         PNG_MAGIC)


def _decode_one(image_bytes, image_shape: Tuple[int, int, int], preprocessing: str):
    """JPEG/PNG bytes -> float32 [H, W, C] in [0, 1], resized (or center-cropped) like the evaluation pipeline."""
    height, width, channels = image_shape
    image = tf.io.decode_image(image_bytes, channels=channels, dtype=tf.float32, expand_animations=False)
    if preprocessing == "center_crop":
        image = center_crop(image, height)
    else:
        same_size = tf.reduce_all(tf.equal(tf.shape(image)[:2], [height, width]))
        image = tf.cond(same_size, lambda: image, lambda: tf.image.resize(image, [height, width]))
    return tf.ensure_shape(tf.clip_by_value(image, 0.0, 1.0), image_shape)


def _check_encoded(image_bytes):
    """Fail with a clear message (and the offending indices) unless every element starts like a JPEG or PNG."""
    is_jpeg = tf.equal(tf.strings.substr(image_bytes, 0, len(JPEG_MAGIC)), JPEG_MAGIC)
    is_png = tf.equal(tf.strings.substr(image_bytes, 0, len(PNG_MAGIC)), PNG_MAGIC)
    valid = tf.logical_or(is_jpeg, is_png)
    return tf.debugging.Assert(tf.reduce_all(valid), [
        "predict_images_bytes: every element of image_bytes must be a JPEG or PNG file; these indices are not:",
        tf.reshape(tf.where(tf.logical_not(valid)), [-1])], summarize=20)


def _check_image_shape(images, image_shape: Tuple[int, int, int]):
    """Fail with a clear message unless images are [batch, H, W, C] of the model's size: the server does not check
    a request's shape against the signature, and these fully convolutional models would silently accept others."""
    shape = tf.shape(images)
    fits = tf.logical_and(tf.equal(tf.size(shape), 4),
                          tf.reduce_all(tf.equal(tf.pad(shape, [[0, 4]])[1:4], list(image_shape))))
    return tf.debugging.Assert(fits, [
        f"serving_default: images must be float32 [batch, {', '.join(map(str, image_shape))}] in [0, 1]; got shape",
        shape], summarize=4)


def serving_signatures(classifier, image_shape: Tuple[int, int, int], preprocessing: str) -> Dict:
    """The two signatures as concrete functions: serving_default (float images) and predict_images_bytes."""
    def outputs(images):
        logits = tf.cast(classifier(images, training=False), tf.float32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1),
                "classes": tf.argmax(logits, axis=-1, output_type=tf.int64)}

    @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32, name=IMAGES_INPUT)],
                 autograph=False)
    def serve_images(images):
        with tf.control_dependencies([_check_image_shape(images, image_shape)]):
            return outputs(tf.identity(images))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)], autograph=False)
    def serve_image_bytes(image_bytes):
        with tf.control_dependencies([_check_encoded(image_bytes)]):
            images = tf.map_fn(lambda b: _decode_one(b, image_shape, preprocessing), image_bytes,
                               fn_output_signature=tf.TensorSpec(image_shape, tf.float32))
        return outputs(images)

    return {IMAGES_SIGNATURE: serve_images.get_concrete_function(),
            BYTES_SIGNATURE: serve_image_bytes.get_concrete_function()}
