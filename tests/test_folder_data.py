"""Early stopping on folder: data (JPEG trees, ImageNet-style): no validation arrays exist, so the held-out stream
is sampled into memory and best.keras is written like for in-memory data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def jpeg_tree(root, cifar_slice, per_class: int = 12):
    """train/ and val/ folders of two class sub-folders of real CIFAR-10 images saved as JPEG files."""
    from PIL import Image

    x, y = cifar_slice["x_train"], cifar_slice["y_train"].reshape(-1)
    for split, offset in (("train", 0), ("val", 500)):
        for label, name in ((0, "airplane"), (1, "automobile")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, index in enumerate(np.flatnonzero(y == label)[offset:offset + per_class]):
                Image.fromarray(x[index]).save(folder / f"{i}.jpg", quality=95)
    return root


def test_early_stopping_writes_best_keras_for_folder_data(tmp_path, cifar_slice):
    tree = jpeg_tree(tmp_path / "images", cifar_slice)
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "tf_fastbat.train", f"--dataset=folder:{tree}", "--image_size=32",
         f"--workdir={workdir}", "--architecture=preact_resnet18", "--width_multiplier=0.0625", "--epochs=2",
         "--batch_size=8", "--val_ratio=0.25", "--es_pgd_steps=1", "--es_pgd_restarts=1", "--eval_pgd_steps=1",
         "--eval_pgd_restarts=1", "--tensorboard=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (workdir / "checkpoints" / "best.keras").is_file()
    best = json.loads((workdir / "checkpoints" / "best.json").read_text())
    assert best["epoch"] in (1, 2) and 0.0 <= best["val_robust_accuracy"] <= best["val_clean_accuracy"] <= 1.0
    rows = (workdir / "training_log.csv").read_text().splitlines()
    assert "val_robust_accuracy" in rows[0] and len(rows) == 3
