"""Test set-up: quiet TensorFlow with the package's CPU kernels, the shared CIFAR-10 slice path."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib  # noqa: E402

from tf_fastbat.runtime import default_cpu_kernels  # noqa: E402

default_cpu_kernels()  # before any test imports TensorFlow: the CPU kernels the tools give users (Eigen)

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_SLICE = ROOT.parent / "shared" / "data" / "cifar10_subset.npz"
BUNDLED_SLICE = ROOT / "tf_fastbat" / "data" / "cifar10_slice.npz"


@pytest.fixture(scope="session")
def cifar_slice():
    """The shared real CIFAR-10 slice; a missing file is a failure, not a skip."""
    import numpy as np

    if not SHARED_SLICE.exists():
        pytest.fail(f"missing {SHARED_SLICE}: CI needs ../shared/data beside the clone (see ../shared/data/README.md)")
    with np.load(SHARED_SLICE) as archive:
        return {k: archive[k] for k in archive.files}


def run_as_script(test_file: str, *args: str, timeout: int = 300) -> None:
    """Runs a test module as a script in a fresh process (CPU only, no TF_CONFIG), for runs that need their own
    logical devices; fails with the end of its stderr."""
    import subprocess
    import sys

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    process = subprocess.run([sys.executable, os.path.abspath(test_file), *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=timeout)
    assert process.returncode == 0, process.stderr[-3000:]


class Installed:
    """The package as a user gets it: a wheel built from the checkout, installed with `pip install --no-deps --target`
    into a folder outside the checkout, its dependencies those of the test's virtualenv.

    `env` runs subprocesses on it: PYTHONPATH is the install folder only (it comes before the venv's site-packages,
    whose editable finder for the checkout is consulted only after the path, so the installed copy wins; the
    `installed` fixture checks it with a probe); run them with `python` and a cwd outside the checkout (`cwd`, or
    a tmp dir), never from ROOT."""

    def __init__(self, target: pathlib.Path, cwd: pathlib.Path):
        import sys

        self.target = target  # the install folder: tf_fastbat/ and its dist-info
        self.bin = target / "bin"  # the console scripts (tf-fastbat-evaluate, ...), their shebang the venv's python
        self.cwd = cwd  # an empty folder outside the checkout
        self.python = sys.executable
        self.env = {**os.environ, "PYTHONPATH": str(target), "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        self.env.pop("TF_CONFIG", None)

    def script(self, name: str) -> pathlib.Path:
        """The installed console script `name`; a missing one is a failure."""
        path = self.bin / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            pytest.fail(f"the installed package has no console script {name} in {self.bin}: "
                        f"{sorted(p.name for p in self.bin.iterdir()) if self.bin.is_dir() else 'no bin folder'}")
        return path

    def run(self, args, cwd=None, timeout: int = 600):
        """Runs `args` (a list) in the installed environment; fails with the end of its stderr."""
        import subprocess

        process = subprocess.run([str(a) for a in args], cwd=cwd or self.cwd, env=self.env, capture_output=True,
                                 text=True, timeout=timeout)
        if process.returncode != 0:
            pytest.fail(f"{' '.join(map(str, args))[:300]}: exit {process.returncode}\n{process.stderr[-3000:]}")
        return process


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Installed:
    """The checkout built as a wheel (from a copy of its sources, so that nothing is written into the checkout) and
    installed --no-deps into a tmp folder, once per session; a probe from outside the checkout imports it from there."""
    import json
    import shutil
    import subprocess
    import sys
    import tomllib

    base = tmp_path_factory.mktemp("installed")
    source = base / "source"
    shutil.copytree(ROOT / "tf_fastbat", source / "tf_fastbat", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)

    def pip(*args):
        process = subprocess.run([sys.executable, "-m", "pip", *args], cwd=base, capture_output=True, text=True,
                                 timeout=600)
        if process.returncode != 0:
            pytest.fail(f"pip {' '.join(args)}: exit {process.returncode}\n{process.stderr[-3000:]}")

    pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(base / "wheel"), str(source))
    wheel = next((base / "wheel").glob("tf_fastbat-*.whl"))
    pip("install", "--no-deps", "-q", "--target", str(base / "site"), str(wheel))
    cwd = base / "cwd"
    cwd.mkdir()
    result = Installed(base / "site", cwd)
    probe = ("import importlib.metadata, json, tf_fastbat\n"
             "dist = importlib.metadata.distribution('tf-fastbat')\n"
             "print(json.dumps({'file': tf_fastbat.__file__, 'distribution': str(dist.locate_file('')),\n"
             "                  'version': dist.version}))")
    found = json.loads(result.run([result.python, "-c", probe]).stdout.splitlines()[-1])
    package = pathlib.Path(found["file"]).resolve()
    assert package.is_relative_to(result.target.resolve()) and not package.is_relative_to(ROOT), found
    assert pathlib.Path(found["distribution"]).resolve() == result.target.resolve(), found  # its metadata too
    assert found["version"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"], found
    return result
