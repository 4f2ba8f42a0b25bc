"""tf-fastbat-client (python -m tf_fastbat.serving.client): predictions of a tf_fastbat classifier on TF Serving.

    tf-fastbat-client --rest=http://localhost:8501 cat.png dog.jpg          # files: predict_images_bytes
    tf-fastbat-client --grpc=localhost:8500 --npy=images.npy                # float arrays: serving_default

Requests are validated before anything is sent (rank, channels, dtype, values in [0, 1], bytes that decode),
sent in batches to one model version, retried on transient failures (--retries, --backoff, --timeout), and a
failure is one line naming the server. The library: tf_fastbat.serving.clients and tf_fastbat.serving.requests.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import List, Optional, Tuple

import numpy as np
from absl import flags

from tf_fastbat import cli
from tf_fastbat.serving.clients import (LOG, REQUEST_FORMATS, GrpcClient, NotServed, RestClient, ServingError,
                                        parse_rest_response)
from tf_fastbat.serving.protocol import DEFAULT_MODEL_NAME
from tf_fastbat.serving.requests import (ClientError, image_format, read_image_files, read_metadata,
                                         validate_image_bytes, validate_images)
from tf_fastbat.serving.retries import RetryPolicy

RENAMED = (("batch_size", "request_batch_size"),)  # (old, new)
# The library's names, here too, so that `from tf_fastbat.serving import client` is the one import a user needs.
__all__ = ["ClientError", "GrpcClient", "NotServed", "RestClient", "RetryPolicy", "ServingError", "image_format",
           "main", "parse_rest_response", "read_image_files", "read_metadata", "validate_image_bytes",
           "validate_images"]


def define_server_flags() -> None:
    flags.DEFINE_string("rest", None, "REST endpoint, e.g. http://localhost:8501 (or --grpc).")
    flags.DEFINE_string("grpc", None, "gRPC endpoint, e.g. localhost:8500 (or --rest).")
    flags.register_multi_flags_validator(["rest", "grpc"], _one_endpoint)
    flags.DEFINE_string("model_name", DEFAULT_MODEL_NAME, "TF Serving model name.")
    flags.DEFINE_integer("model_version", None, "A version (default: the served one).")
    flags.DEFINE_enum("format", "instances", list(REQUEST_FORMATS), "REST request format.")


def define_request_flags() -> None:
    flags.DEFINE_integer("request_batch_size", 32, "Images per request.")
    cli.validator("request_batch_size", lambda v: v >= 1, lambda v: f"--request_batch_size={v}: must be >= 1")
    flags.DEFINE_float("timeout", 60.0, "Seconds per request (each attempt).")
    cli.validator("timeout", lambda v: v > 0, lambda v: f"--timeout={v:g}: must be positive seconds")
    flags.DEFINE_integer("retries", 3, "More attempts after a refused connection, a timeout, HTTP 429/5xx or gRPC "
                         "UNAVAILABLE/DEADLINE_EXCEEDED/RESOURCE_EXHAUSTED.")
    cli.validator("retries", lambda v: v >= 0, lambda v: f"--retries={v}: must be >= 0")
    flags.DEFINE_float("backoff", 0.5, "Seconds before the first retry, doubled for each next one (at most 8).")
    cli.validator("backoff", lambda v: v >= 0, lambda v: f"--backoff={v:g}: must be >= 0 seconds")


def define_input_flags() -> None:
    flags.DEFINE_string("metadata", None, "The export's metadata.json (or its version dir / DIR/NAME): class names "
                        "and the input shape.")
    flags.DEFINE_string("npy", None, "A .npy of float images [N, H, W, C] in [0, 1] (sent to serving_default); "
                        "else JPEG/PNG files as arguments (sent as bytes to predict_images_bytes).")


def define_renamed_flags() -> None:
    for old, new in RENAMED:
        cli.renamed(old, new)


def define_flags() -> None:
    """The client's flags by group."""
    cli.define_groups([("Server", define_server_flags), ("Requests", define_request_flags),
                       ("Inputs", define_input_flags), ("", define_renamed_flags)])


def _one_endpoint(values) -> bool:
    if bool(values["rest"]) == bool(values["grpc"]):
        raise flags.ValidationError("give one server: --rest=URL or --grpc=HOST:PORT")
    return True


def _load_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ClientError(f"--npy={path}: cannot read a numpy array ({error})") from error


def _log_warnings_to_stderr(prog: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prog}: warning: %(message)s"))
    LOG.addHandler(handler)
    LOG.propagate = False


def predict(f, files: List[str], prog: str) -> int:
    """Send the inputs, print one JSON line per input; the exit status."""
    _log_warnings_to_stderr(prog)
    try:
        if bool(files) == bool(f.npy):
            raise ClientError("give image files or --npy=PATH (exactly one of them)")
        retry = RetryPolicy(f.retries, f.backoff)
        metadata = read_metadata(f.metadata) if f.metadata else {}
        shape: Optional[Tuple[int, ...]] = tuple(metadata["input_shape"]) if metadata.get("input_shape") else None
        if f.rest:
            client = RestClient(f.rest, f.model_name, f.model_version, f.format, f.timeout, shape, retry)
        else:
            client = GrpcClient(f.grpc, f.model_name, f.model_version, f.timeout, shape, retry=retry)
        if f.npy:
            outputs = client.predict(_load_npy(f.npy), f.request_batch_size)
            names = [f"{f.npy}[{i}]" for i in range(len(outputs["classes"]))]
        else:
            outputs = client.predict_bytes(read_image_files(files), f.request_batch_size)
            names = list(files)
    except ServingError as error:
        sys.stderr.write(f"{prog}: server error: {error}\n")
        return 1
    class_names = metadata.get("class_names") or []
    for name, label, probabilities in zip(names, outputs["classes"], outputs["probabilities"]):
        row = {"input": name, "class": int(label), "probability": float(probabilities[label]),
               "version": client.answered_version}
        if int(label) < len(class_names):
            row["class_name"] = class_names[int(label)]
        print(json.dumps(row))
    return 0


def main(argv: Optional[List[str]] = None, prog: str = "tf-fastbat-client") -> None:
    """The command (exits with its status); `prog` names it in its messages (the console script, or
    export/client.py's name). A refused input is one line, `<prog>: error: ...`, and status 2."""
    cli.run(prog, define_flags, lambda arguments: predict(flags.FLAGS, arguments[1:], prog),
            [prog, *(sys.argv[1:] if argv is None else argv)], positional="FILE")


def console_main() -> None:
    main()


if __name__ == "__main__":
    main(prog="tf_fastbat.serving.client")
