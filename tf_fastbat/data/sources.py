"""Where images come from: tensorflow_datasets, an npz file, or an ImageNet-style folder tree.

In-memory sources (npz, 32x32 TFDS sets) are validated before any training work starts.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import zipfile
from typing import Optional, Sequence, Tuple

import numpy as np

from tf_fastbat.errors import UsageError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Per-channel (mean, std) on [0, 1] pixels, as in the official data loaders.
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
TFDS_IN_MEMORY = ("cifar10", "cifar100", "svhn_cropped")
TFDS_STREAMED = ("imagenet2012",)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".PNG")


DataError = UsageError  # a dataset that cannot be used; the message names the dataset (dataset=...) or file


@dataclasses.dataclass
class Source:
    """A dataset: in-memory uint8 arrays, or file lists for a streamed (ImageNet-style) set."""

    name: str
    num_classes: int
    class_names: Tuple[str, ...]
    image_shape: Tuple[int, int, int]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    x_train: Optional[np.ndarray] = None
    y_train: Optional[np.ndarray] = None
    x_test: Optional[np.ndarray] = None
    y_test: Optional[np.ndarray] = None
    train_files: Optional[Sequence[str]] = None
    train_labels: Optional[np.ndarray] = None
    test_files: Optional[Sequence[str]] = None
    test_labels: Optional[np.ndarray] = None

    @property
    def in_memory(self) -> bool:
        """Arrays in memory (a test-only npz has no training arrays)."""
        return self.x_test is not None


def _check_arrays(x: np.ndarray, y: np.ndarray, where: str) -> None:
    if x.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8 in [0, 255], got dtype {x.dtype}")
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{where}: images must be NHWC with 1 or 3 channels, got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{where}: labels must be a vector of {len(x)} entries, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}")
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: negative label {y.min()}")


TRAIN_KEYS, TEST_KEYS = ("x_train", "y_train"), ("x_test", "y_test")


def load_npz(path: str, test_only: bool = False) -> Source:
    """An npz with x_train, y_train, x_test, y_test (uint8 NHWC images, integer labels); with `test_only` (what
    evaluation needs) x_test and y_test are enough, and the training arrays are not read."""
    if not os.path.isfile(path):
        raise DataError(f"dataset=npz:{path}: file not found")
    wanted = TEST_KEYS if test_only else TRAIN_KEYS + TEST_KEYS
    try:
        with np.load(path) as archive:
            missing = set(wanted) - set(archive.files)
            if missing:
                need = "evaluation needs x_test and y_test" if test_only else \
                    "training needs x_train, y_train, x_test and y_test; evaluation only x_test and y_test"
                raise DataError(f"dataset=npz:{path}: missing keys {', '.join(sorted(missing))} ({need})")
            arrays = {k: archive[k] for k in wanted}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"dataset=npz:{path}: not a readable npz file ({error})") from error
    _check_arrays(arrays["x_test"], arrays["y_test"], f"{path} (test)")
    if test_only:
        return _npz_source(path, arrays["x_test"], arrays["y_test"], None, None, arrays["x_test"], arrays["y_test"])
    _check_arrays(arrays["x_train"], arrays["y_train"], f"{path} (train)")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"{path}: train images {arrays['x_train'].shape[1:]} and test images "
                        f"{arrays['x_test'].shape[1:]} differ in shape")
    num_classes = int(arrays["y_train"].max()) + 1
    if arrays["y_test"].max() >= num_classes:
        raise DataError(f"{path}: test label {arrays['y_test'].max()} is out of range (training labels are "
                        f"0..{num_classes - 1})")
    return _npz_source(path, arrays["x_train"], arrays["y_train"], arrays["x_train"], arrays["y_train"],
                       arrays["x_test"], arrays["y_test"])


def _npz_source(path: str, x_stats: np.ndarray, y_classes: np.ndarray, x_train, y_train, x_test, y_test) -> Source:
    """A Source of npz arrays: classes counted on `y_classes`, mean and std measured on `x_stats`."""
    num_classes = int(y_classes.max()) + 1 if len(y_classes) else 0
    pixels = x_stats.reshape(-1, x_stats.shape[-1]).astype(np.float64) / 255.0
    mean, std = tuple(pixels.mean(0)), tuple(pixels.std(0) + 1e-8)
    class_names = CIFAR10_CLASSES if num_classes == 10 and x_stats.shape[1:] == (32, 32, 3) else tuple(
        str(i) for i in range(num_classes))
    return Source(name=f"npz:{path}", num_classes=num_classes, class_names=class_names,
                  image_shape=tuple(x_stats.shape[1:]), mean=mean, std=std,
                  x_train=x_train, y_train=None if y_train is None else y_train.astype(np.int64),
                  x_test=x_test, y_test=y_test.astype(np.int64))


def load_tfds(name: str, data_dir: Optional[str], manual_dir: Optional[str], image_size: int = 224) -> Source:
    """A tensorflow_datasets set, into memory for the 32x32 ones, as streams of `image_size` crops otherwise."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataError(f"dataset={name} needs tensorflow_datasets: pip install tensorflow-datasets") from error
    if name not in TFDS_IN_MEMORY + TFDS_STREAMED:
        raise DataError(f"dataset={name}: supported TFDS names are {', '.join(TFDS_IN_MEMORY + TFDS_STREAMED)}; "
                        "use npz:PATH or folder:PATH for others")
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        builder.download_and_prepare(download_config=download_config)
    except Exception as error:  # network, missing manual files, corrupt cache: all end here
        raise DataError(f"dataset={name}: tensorflow_datasets could not prepare it ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''}); offline, use npz:PATH") from error
    info = builder.info
    class_names = tuple(info.features["label"].names)
    mean, std = NORMALIZATION[name]
    if name in TFDS_STREAMED:
        return Source(name=name, num_classes=len(class_names), class_names=class_names,
                      image_shape=(image_size, image_size, 3), mean=mean, std=std)
    splits = {}
    for split in ("train", "test"):  # in blocks: a split as one batch (batch_size=-1) aborts under mock_data
        blocks = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=4096, as_supervised=True)))
        splits[split] = (np.concatenate([x for x, _ in blocks]).astype(np.uint8),
                         np.concatenate([y for _, y in blocks]).astype(np.int64))
    return Source(name=name, num_classes=len(class_names), class_names=class_names,
                  image_shape=tuple(splits["train"][0].shape[1:]), mean=mean, std=std,
                  x_train=splits["train"][0], y_train=splits["train"][1],
                  x_test=splits["test"][0], y_test=splits["test"][1])


def _list_tree(root: str, class_names: Sequence[str]) -> Tuple[list, np.ndarray]:
    files, labels = [], []
    for label, cls in enumerate(class_names):
        folder = os.path.join(root, cls)
        if not os.path.isdir(folder):
            continue
        for entry in sorted(os.listdir(folder)):
            if entry.endswith(IMAGE_EXTENSIONS):
                files.append(os.path.join(folder, entry))
                labels.append(label)
    return files, np.asarray(labels, dtype=np.int64)


def load_folder(path: str, image_size: int) -> Source:
    """An ImageNet-style tree: PATH/train/<class>/*.jpg and PATH/val/<class>/*.jpg."""
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(path, split)):
            raise DataError(f"dataset=folder:{path}: no {split}/ sub-folder")
    class_names = tuple(sorted(d for d in os.listdir(os.path.join(path, "train"))
                               if os.path.isdir(os.path.join(path, "train", d))))
    if not class_names:
        raise DataError(f"dataset=folder:{path}: train/ holds no class sub-folders")
    train_files, train_labels = _list_tree(os.path.join(path, "train"), class_names)
    test_files, test_labels = _list_tree(os.path.join(path, "val"), class_names)
    if not train_files or not test_files:
        raise DataError(f"dataset=folder:{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) under train/ or val/")
    mean, std = NORMALIZATION["imagenet2012"]
    return Source(name=f"folder:{path}", num_classes=len(class_names), class_names=class_names,
                  image_shape=(image_size, image_size, 3), mean=mean, std=std,
                  train_files=train_files, train_labels=train_labels, test_files=test_files, test_labels=test_labels)


BUNDLED = {"cifar10_slice": "cifar10_slice.npz"}  # bundled:NAME, package data of tf_fastbat.data


def bundled_path(name: str) -> str:
    """The file of a dataset shipped inside the package (installed or not), found with importlib.resources."""
    if name not in BUNDLED:
        raise DataError(f"dataset=bundled:{name}: no such bundled dataset; choose from {', '.join(BUNDLED)}")
    return str(importlib.resources.files("tf_fastbat.data").joinpath(BUNDLED[name]))


def load(spec: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None, image_size: int = 224,
         test_only: bool = False) -> Source:
    """Resolve a --dataset value: a TFDS name, npz:PATH, folder:PATH or bundled:NAME (bundled:cifar10_slice); with
    `test_only` an npz needs only its test arrays."""
    if spec.startswith("bundled:"):
        return dataclasses.replace(load_npz(bundled_path(spec[len("bundled:"):]), test_only), name=spec)
    if spec.startswith("npz:"):
        return load_npz(spec[len("npz:"):], test_only)
    if spec.startswith("folder:"):
        return load_folder(spec[len("folder:"):], image_size)
    return load_tfds(spec, data_dir, manual_dir, image_size)
