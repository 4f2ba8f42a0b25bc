"""Data sources and pipelines: validation of bad files, the held-out split, and the CIFAR augmentation."""

import numpy as np
import pytest
import tensorflow as tf

from tf_fastbat import data
from tf_fastbat.data import pipeline, sources
from tf_fastbat.data.sources import DataError

from conftest import BUNDLED_SLICE


def write_npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8), "y_train": np.arange(20) % 4,
              "x_test": rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8), "y_test": np.arange(6) % 4}
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


def test_bundled_slice_is_the_shared_slice_head(cifar_slice):
    bundled = sources.load_npz(str(BUNDLED_SLICE))
    assert bundled.x_train.shape == (2000, 32, 32, 3) and bundled.x_test.shape == (500, 32, 32, 3)
    np.testing.assert_array_equal(bundled.x_train, cifar_slice["x_train"][:2000])
    np.testing.assert_array_equal(bundled.y_test, cifar_slice["y_test"][:500])
    assert bundled.num_classes == 10 and bundled.class_names[3] == "cat"
    assert BUNDLED_SLICE.stat().st_size <= 8 * 1024 * 1024


@pytest.mark.parametrize("overrides,message", [
    ({"x_train": np.zeros((20, 8, 8, 3), np.float32)}, "uint8"),
    ({"x_train": np.zeros((20, 8, 8), np.uint8)}, "NHWC"),
    ({"y_train": np.arange(19)}, "labels must be a vector of 20"),
    ({"y_test": np.array([0, 1, 2, 3, 4, 9])}, "out of range"),
    ({"y_test": None}, "missing keys y_test"),
])
def test_bad_npz_files_get_a_clear_message(tmp_path, overrides, message):
    path = write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(DataError, match=message):
        sources.load_npz(path)


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(DataError, match="nowhere.npz: file not found"):
        data.load("npz:" + str(tmp_path / "nowhere.npz"))
    path = write_npz(tmp_path / "ok.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(open(path, "rb").read()[:300])
    with pytest.raises(DataError, match="truncated.npz"):
        data.load("npz:" + str(truncated))


def test_validation_split_is_seeded_disjoint_and_ten_percent():
    x = np.arange(100).reshape(100, 1, 1, 1).astype(np.uint8)
    y = np.arange(100)
    (xt, yt), (xv, yv) = pipeline.split_validation(x, y, 0.1, seed=3)
    assert len(yv) == 10 and len(yt) == 90 and not set(yv) & set(yt)
    (_, _), (_, yv2) = pipeline.split_validation(x, y, 0.1, seed=3)
    np.testing.assert_array_equal(yv, yv2)


def test_augmentation_is_a_shifted_crop_of_the_zero_padded_image_possibly_flipped():
    rng = np.random.default_rng(1)
    image = rng.integers(1, 256, (32, 32, 3), dtype=np.uint8)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    for s in range(8):
        out = pipeline._pad_crop_flip(tf.constant(image), tf.constant([7, s], tf.int64)).numpy()
        candidates = [padded[i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
        candidates += [c[:, ::-1] for c in candidates]
        assert any(np.array_equal(out, c) for c in candidates)


def test_training_pipeline_yields_unit_range_batches_and_repeats_with_the_seed():
    x = np.random.default_rng(2).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    y = np.arange(40) % 10
    first = [b for b in pipeline.array_dataset(x, y, 16, training=True, seed=5)]
    second = [b for b in pipeline.array_dataset(x, y, 16, training=True, seed=5)]
    assert [len(b[0]) for b in first] == [16, 16, 8]
    images = np.concatenate([b[0].numpy() for b in first])
    assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 1
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())


def test_folder_source_lists_classes_and_files(tmp_path):
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            encoded = tf.io.encode_png(np.full((10, 12, 3), 100, np.uint8)).numpy()
            (folder / "a.png").write_bytes(encoded)
    source = data.load(f"folder:{tmp_path}", image_size=16)
    assert source.class_names == ("cat", "dog") and len(source.train_files) == 2
    splits = data.splits(source, batch_size=2, val_ratio=0.0, seed=0, validation_examples=0)
    images, labels = next(iter(splits.test))
    assert images.shape == (2, 16, 16, 3) and np.allclose(images.numpy(), 100 / 255, atol=1e-3)
    with pytest.raises(DataError, match="no train/ sub-folder"):
        data.load(f"folder:{tmp_path / 'train'}")
