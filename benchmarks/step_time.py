"""Seconds per training step, peak memory and seconds per epoch of every training method (the issue's speed table).

What is timed is the project's own training step: an AdversarialTrainer built as tf_fastbat.train builds it
(model, method, CoupledSGD with the cyclic schedule, LossScaleOptimizer for float16, compile), then its compiled
Keras train function called on a tf.data iterator of one fixed, already materialized batch (so tf.data costs
nothing). Every configuration runs in its own subprocess (clean allocator, no cross-talk), one after another.

Per configuration (method x width):
  step_seconds      median wall time of --steps calls of the train function (each call one step, synchronized by
                    reading the loss; the first --warmup_steps calls, tracing included, are not timed)
  peak_memory_mb    GPU: peak bytes of TF's device allocator over the timed steps (get_memory_info 'peak').
                    CPU (no allocator statistics there): peak resident set size sampled every 2 ms during the
                    timed steps minus the RSS before the first step, i.e. step buffers plus traced graphs
  peak_rss_mb       the absolute peak RSS of the process over the timed steps
  epoch_seconds     one epoch of `fit` over the bundled CIFAR-10 slice (1800 training images after the 10%
                    hold-out, train.py's pipeline: shuffle, pad-crop-flip, prefetch), after a one-step warm-up fit;
                    no validation callback, training only
  data_seconds_per_step  the same pipeline alone, per batch: tf.data must be far below step_seconds
  conv_ops, pass_equivalents  conv-type ops (Conv2D, Conv2DBackpropInput, Conv2DBackpropFilter) that one traced
                    train step executes (ops reachable from its outputs and stateful ops, as the runtime prunes),
                    divided by the model's conv layers: forward-pass equivalents, against the pass count the method
                    needs (Fast-AT 5, Fast-BAT 11, ...): a larger count means a pass computed twice

    .venv/bin/python -m benchmarks.step_time --width_multiplier=0.25 --steps=5 --json
    .venv/bin/python -m benchmarks.step_time --methods=fast_at,fast_bat --no-epoch

With --json the last line printed is {"<method>": {"step_seconds": ..., "peak_memory_mb": ..., ...}, ...} for the
first width given (PreActResNet-18 at batch 128 and width 1 by default); other widths go under
"width_multiplier=<w>" keys, the run conditions under "conditions".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

from benchmarks import registry
from tf_fastbat.runtime import default_cpu_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EPS = 8.0 / 255.0
SLICE = "bundled:cifar10_slice"
# Forward-pass equivalents per step (one conv-type op per conv layer = 1): forward 1, input-gradient backward 1,
# weight-gradient backward 2 (input and filter gradients), double backward 4 (Conv2D and filter gradient of the
# backward's convs, plus input and filter gradients back through the forward). See the report for the counts.
# FGSM-PGI: forward at the prior, its input gradient, forward at x_adv, weight gradients back through both (2 + 2).
# NuAT: a forward at x (the attack's reference), the eval-mode attack's forward and input gradient, forwards at
# x_adv and x with their weight gradients (1 + 2 + 6). ELLE-A: the FGSM's forward and input gradient at x, the
# forward at x_adv and one forward of the three triplet batches concatenated, with weight gradients (2 + 3 + 3).
# LIET: as FGSM-PGI (the start's forward and input gradient, the forward at x_adv, weight gradients through both);
# its label-indicative perturbation (K gray images, every 20th step: under 1% of a step) runs in a tf.cond branch,
# which the count does not enter.
PASS_BUDGET = {"fast_at": 5, "fast_bat": 11, "fast_at_ga": 11, "pgd": 7, "n_fgsm": 5, "standard": 3, "fgsm_pgi": 7,
               "nu_at": 9, "elle_a": 8, "liet": 7}
TARGET_RATIO = {"fast_bat": 2.2, "fast_at_ga": 3.0, "pgd": 1.6}  # of Fast-AT's step time (the targets)
CONV_OPS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter")
RESULT_PREFIX = "STEP_TIME_RESULT "


# ----------------------------------------------------------------------------------------------------------------
# One configuration (runs in a subprocess).

def build_trainer(method_name: str, width: float, batch_size: int, mixed_precision: str, jit_compile: bool,
                  steps_per_epoch: int):
    """Classifier, method, optimizer and AdversarialTrainer exactly as tf_fastbat.train assembles them."""
    import keras

    from tf_fastbat import data, methods, models, optim
    from tf_fastbat.trainer import assemble, sgd

    keras.mixed_precision.set_global_policy(mixed_precision)
    source = data.load(SLICE)
    classifier = models.build("preact_resnet18", source.num_classes, "relu", width, source.image_shape,
                              source.mean, source.std)
    hparams = {"eps": EPS, **({"steps": 2} if method_name == "pgd" else {})}
    method = methods.build(method_name, **hparams)
    schedule = optim.schedule("cyclic", epochs=20, steps_per_epoch=steps_per_epoch, lr_max=0.2)
    momentum = optim.momentum_schedule("cyclic", momentum=0.9, cycle_momentum=True, epochs=20,
                                       steps_per_epoch=steps_per_epoch)
    trainer = assemble(classifier, method, sgd(schedule, momentum, 5e-4, mixed_precision), seed=0,
                       jit_compile=jit_compile, num_examples=len(source.x_train), steps_per_epoch=steps_per_epoch)
    return trainer, source


def batch_elements(trainer, x, y):
    """(x, y), or (x, y, positions) for a method with per-example state (FGSM-PGI)."""
    import numpy as np

    return (x, y, np.arange(len(x), dtype=np.int64)) if trainer.method.needs_index else (x, y)


def conv_layer_count(classifier) -> int:
    import keras

    return sum(isinstance(layer, keras.layers.Conv2D) for layer in classifier._flatten_layers())


def executed_op_types(graph) -> Dict[str, int]:
    """Op types of `graph` that run: those the outputs or a stateful op (variable updates) depend on."""
    pending = [t.op for t in graph.outputs] + [op for op in graph.get_operations() if op.op_def.is_stateful]
    seen = set()
    counts: Dict[str, int] = {}
    while pending:
        op = pending.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        counts[op.type] = counts.get(op.type, 0) + 1
        pending.extend(t.op for t in op.inputs)
        pending.extend(op.control_inputs)
    return counts


def pass_structure(trainer, batch_size: int, image_shape) -> Dict:
    """Conv-type ops one traced train step executes, in forward-pass equivalents; host callbacks (py_func)."""
    import tensorflow as tf

    specs = (tf.TensorSpec([batch_size, *image_shape], tf.float32), tf.TensorSpec([batch_size], tf.int32))
    specs += (tf.TensorSpec([batch_size], tf.int64),) if trainer.method.needs_index else ()
    graph = tf.function(trainer.train_step).get_concrete_function(specs).graph
    counts = executed_op_types(graph)
    conv = {name: counts.get(name, 0) for name in CONV_OPS}
    layers = conv_layer_count(trainer.classifier)
    python_ops = sum(counts.get(name, 0) for name in ("PyFunc", "EagerPyFunc", "PyFuncStateless"))
    return {"conv_ops": conv, "conv_layers": layers, "pass_equivalents": round(sum(conv.values()) / layers, 2),
            "python_ops_in_step": python_ops}


class PeakRSS:
    """Samples the process's resident set size in a background thread; `peak` is the largest sample, in bytes."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def time_steps(trainer, source, batch_size: int, steps: int, warmup: int) -> Dict:
    """Median seconds of one call of the compiled train function; peak memory over the timed calls."""
    import numpy as np
    import psutil
    import tensorflow as tf

    x = source.x_train[:batch_size].astype(np.float32) / 255.0
    y = source.y_train[:batch_size].astype(np.int32)
    iterator = iter(tf.data.Dataset.from_tensors(batch_elements(trainer, x, y)).repeat())
    trainer.make_train_function()
    train_function = trainer.train_function
    gpus = tf.config.list_logical_devices("GPU")
    rss_before = psutil.Process().memory_info().rss
    for _ in range(warmup):
        float(train_function(iterator)["loss"])
    if gpus:
        tf.config.experimental.reset_memory_stats(gpus[0].name)
    seconds: List[float] = []
    with PeakRSS() as rss:
        for _ in range(steps):
            start = time.perf_counter()
            float(train_function(iterator)["loss"])  # reading the loss waits for the step to finish
            seconds.append(time.perf_counter() - start)
    if gpus:
        peak, source_name = tf.config.experimental.get_memory_info(gpus[0].name)["peak"], "gpu_allocator_peak"
    else:
        peak, source_name = rss.peak - rss_before, "cpu_rss_peak_minus_rss_before_first_step"
    return {"step_seconds": statistics.median(seconds), "step_seconds_all": [round(s, 4) for s in seconds],
            "peak_memory_mb": round(peak / 2 ** 20, 1), "peak_rss_mb": round(rss.peak / 2 ** 20, 1),
            "memory_measure": source_name}


def time_epoch(trainer, source, batch_size: int) -> Dict:
    """One epoch of fit on the bundled slice through train.py's pipeline, after a one-step warm-up fit."""
    from tf_fastbat import data

    splits = data.splits(source, batch_size, 0.1, 0, 0, with_index=trainer.method.needs_index)
    steps = -(-splits.num_train // batch_size)
    start = time.perf_counter()
    batches = sum(1 for _ in splits.train)
    data_seconds = (time.perf_counter() - start) / batches
    trainer.fit(splits.train.repeat(), epochs=1, steps_per_epoch=1, verbose=0)  # traces the pipeline's input
    start = time.perf_counter()
    trainer.fit(splits.train.repeat(), epochs=1, steps_per_epoch=steps, verbose=0)
    return {"epoch_seconds": time.perf_counter() - start, "epoch_steps": steps, "epoch_examples": splits.num_train,
            "data_seconds_per_step": data_seconds}


def run_configuration(config: Dict) -> Dict:
    """Everything measured for one (method, width)."""
    import tensorflow as tf

    trainer, source = build_trainer(config["method"], config["width"], config["batch_size"],
                                    config["mixed_precision"], config["jit_compile"], steps_per_epoch=15)
    result = {"method": config["method"], "width_multiplier": config["width"], "batch_size": config["batch_size"],
              "jit_compile": bool(trainer.jit_compile), "mixed_precision": config["mixed_precision"],
              "device": "GPU" if tf.config.list_logical_devices("GPU") else "CPU"}
    if config["passes"]:
        result.update(pass_structure(trainer, config["batch_size"], source.image_shape))
        result["pass_budget"] = PASS_BUDGET[config["method"]]
    result.update(time_steps(trainer, source, config["batch_size"], config["steps"], config["warmup"]))
    if config["epoch"]:
        result.update(time_epoch(trainer, source, config["batch_size"]))
    return result


# ----------------------------------------------------------------------------------------------------------------
# The driver.

def measure(config: Dict) -> Dict:
    """Runs one configuration in a fresh Python process and returns its result."""
    env = {**os.environ}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    process = subprocess.run([sys.executable, "-m", "benchmarks.step_time", "--configuration", json.dumps(config)],
                             cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [l for l in process.stdout.splitlines() if l.startswith(RESULT_PREFIX)]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"configuration {config} failed:\n{process.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def add_ratios(results: Dict[str, Dict]) -> None:
    """step_seconds relative to Fast-AT's, and the issue's target where there is one."""
    if "fast_at" not in results:
        return
    base = results["fast_at"]["step_seconds"]
    for name, entry in results.items():
        entry["ratio_to_fast_at"] = round(entry["step_seconds"] / base, 3)
        if name in TARGET_RATIO:
            entry["target_ratio"] = TARGET_RATIO[name]
            entry["meets_target"] = entry["ratio_to_fast_at"] <= TARGET_RATIO[name]


def conditions() -> Dict:
    import platform

    return {"cpu_count": os.cpu_count(), "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"), "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(), "machine": platform.machine()}


def table(width: float, results: Dict[str, Dict]) -> str:
    rows = [f"PreActResNet-18, width {width:g}, batch {next(iter(results.values()))['batch_size']}",
            "method       s/step   x Fast-AT  peak MB  s/epoch  data s/step  passes (budget)"]
    for name, r in results.items():
        ratio = r.get("ratio_to_fast_at")
        rows.append(f"{name:<12} {r['step_seconds']:7.3f}  {ratio if ratio is not None else '-':>9}  "
                    f"{r['peak_memory_mb']:7.0f}  {r.get('epoch_seconds', float('nan')):7.1f}  "
                    f"{r.get('data_seconds_per_step', float('nan')):11.4f}  "
                    f"{r.get('pass_equivalents', '-')} ({r.get('pass_budget', '-')})")
    return "\n".join(rows)


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="all", help="Comma-separated registered methods, or all (every "
                        "method of tf_fastbat.methods.NAMES; pgd is PGD-2).")
    parser.add_argument("--width_multiplier", default="1.0,0.25",
                        help="Comma-separated widths; the first is the --json headline configuration.")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="Timed steps (median reported); at least 5.")
    parser.add_argument("--warmup_steps", type=int, default=2, help="Untimed first steps (tracing).")
    parser.add_argument("--epoch", action=argparse.BooleanOptionalAction, default=True,
                        help="Also time one epoch on the bundled CIFAR-10 slice.")
    parser.add_argument("--passes", action=argparse.BooleanOptionalAction, default=True,
                        help="Count the conv-type ops of one traced step (pass structure).")
    parser.add_argument("--jit_compile", action="store_true", help="XLA for the train step.")
    parser.add_argument("--mixed_precision", default="float32",
                        choices=["float32", "mixed_bfloat16", "mixed_float16"])
    parser.add_argument("--json", action="store_true", help="Print the results as JSON on the last line.")
    parser.add_argument("--output", help="Also write every configuration's full result to this JSON file.")
    parser.add_argument("--configuration", help=argparse.SUPPRESS)  # internal: one configuration, in a subprocess
    args = parser.parse_args(argv)
    known = registry.method_names()
    if args.methods == "all":
        args.methods = ",".join(known)
    unknown = sorted(set(args.methods.split(",")) - set(known))
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(known)} or all")
    if args.steps < 5:
        parser.error("--steps must be at least 5 (the median of at least five steps is reported)")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse(argv)
    default_cpu_kernels()
    if args.configuration:
        print(RESULT_PREFIX + json.dumps(run_configuration(json.loads(args.configuration))), flush=True)
        return
    widths = [float(w) for w in args.width_multiplier.split(",")]
    before = conditions()
    by_width: Dict[float, Dict[str, Dict]] = {}
    for width in widths:
        by_width[width] = {}
        for name in args.methods.split(","):
            config = {"method": name, "width": width, "batch_size": args.batch_size, "steps": args.steps,
                      "warmup": args.warmup_steps, "epoch": args.epoch, "passes": args.passes,
                      "jit_compile": args.jit_compile, "mixed_precision": args.mixed_precision}
            by_width[width][name] = measure(config)
            print(f"measured {name} at width {width:g}: {by_width[width][name]['step_seconds']:.3f} s/step",
                  file=sys.stderr, flush=True)
        add_ratios(by_width[width])
        print(table(width, by_width[width]), flush=True)
    summary: Dict = dict(by_width[widths[0]])
    for width in widths[1:]:
        summary[f"width_multiplier={width:g}"] = by_width[width]
    summary["conditions"] = {"before": before, "after": conditions()}
    if args.output:
        with open(args.output, "w") as out:
            json.dump(summary, out, indent=1)
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
