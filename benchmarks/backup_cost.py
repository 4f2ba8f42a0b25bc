"""What one training backup costs: seconds to write it, seconds to read and restore it, megabytes on disk.

The backup is the one tf_fastbat.train writes (tf_fastbat.resume.RunState's variables and metric accumulators,
written by tf_fastbat.backup with its fsyncs and rename), of a trainer built as train.py builds it
(benchmarks.step_time.build_trainer: PreActResNet-18, Fast-BAT, CoupledSGD with its momentum buffers).

    .venv/bin/python -m benchmarks.backup_cost --width_multiplier=1.0 --repeats=5 --json

  write_seconds    median over --repeats of reading the variables out of TensorFlow and writing the backup
  restore_seconds  median of finding the newest backup, reading and checking it, assigning every variable
  megabytes        the backup folder on disk (variables.npz and manifest.json; no best.keras in this measurement)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Dict, List, Optional

from tf_fastbat.record import Workdir
from tf_fastbat.runtime import default_cpu_kernels


def parse(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backup_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--width_multiplier", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the backups go (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--output", help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats}: must be >= 1")
    return args


def measure(width: float, repeats: int, directory: str) -> Dict:
    """Write `repeats` backups into `directory` (the newest two stay, as in training), then restore the newest."""
    import tensorflow as tf

    from benchmarks.step_time import build_trainer
    from tf_fastbat import backup, resume

    trainer, _ = build_trainer("fast_bat", width, 128, "float32", False, 352)
    record = Workdir(directory)
    run = resume.RunState(trainer, tf.distribute.get_strategy(), record.checkpoints, record.training_log, 128, 352)
    backups = record.backups
    writes = []
    for step in range(1, repeats + 1):
        start = time.perf_counter()
        arrays = {**run.arrays(), "metrics": run.metrics()}
        path = backup.write(backups, step, arrays, run.state(resume.Position(0, step), 0.0))
        writes.append(time.perf_counter() - start)
    size = sum(os.path.getsize(os.path.join(path, name)) for name in os.listdir(path))
    restores = []
    for _ in range(repeats):
        start = time.perf_counter()
        run.restore(backup.newest(backups, print))
        restores.append(time.perf_counter() - start)
    parameters = sum(int(v.numpy().size) for v in trainer.classifier.trainable_variables)
    return {"width_multiplier": width, "parameters": parameters, "variables": len(run.variables),
            "write_seconds": statistics.median(writes), "write_seconds_all": writes,
            "restore_seconds": statistics.median(restores), "restore_seconds_all": restores,
            "megabytes": size / 1e6, "directory": directory}


def main(argv: Optional[List[str]] = None) -> None:
    args = parse(argv)
    default_cpu_kernels()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="backup-cost-") as directory:
        result = measure(args.width_multiplier, args.repeats, directory)
    print(f"PreActResNet-18 width {result['width_multiplier']:g} ({result['parameters'] / 1e6:.1f} M parameters): "
          f"backup {result['megabytes']:.1f} MB, write {result['write_seconds']:.2f} s, "
          f"read and restore {result['restore_seconds']:.2f} s (medians of {args.repeats})")
    if args.output:
        with open(args.output, "w") as out:
            json.dump(result, out, indent=1)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
