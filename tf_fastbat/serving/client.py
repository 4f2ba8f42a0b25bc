"""tf-fastbat-client (python -m tf_fastbat.serving.client): predictions of a tf_fastbat classifier on TF Serving.

    tf-fastbat-client --rest=http://localhost:8501 cat.png dog.jpg          # files: predict_images_bytes
    tf-fastbat-client --grpc=localhost:8500 --npy=images.npy                # float arrays: serving_default

Requests are validated before anything is sent (rank, channels, dtype, values in [0, 1], bytes that decode),
sent in batches to one model version, retried on transient failures (--retries, --backoff, --timeout), and a
failure is one line naming the server. The library: tf_fastbat.serving.clients and tf_fastbat.serving.requests.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import List, Optional, Tuple

import numpy as np

from tf_fastbat.serving.clients import (LOG, REQUEST_FORMATS, GrpcClient, NotServed, RestClient, ServingError,
                                        parse_rest_response)
from tf_fastbat.serving.protocol import DEFAULT_MODEL_NAME
from tf_fastbat.serving.requests import (ClientError, image_format, read_image_files, read_metadata,
                                         validate_image_bytes, validate_images)
from tf_fastbat.serving.retries import RetryPolicy

# The library's names, here too, so that `from tf_fastbat.serving import client` is the one import a user needs.
__all__ = ["ClientError", "GrpcClient", "NotServed", "RestClient", "RetryPolicy", "ServingError", "image_format",
           "main", "parse_rest_response", "read_image_files", "read_metadata", "validate_image_bytes",
           "validate_images"]


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--rest", metavar="URL", help="REST endpoint, e.g. http://localhost:8501")
    where.add_argument("--grpc", metavar="HOST:PORT", help="gRPC endpoint, e.g. localhost:8500")
    parser.add_argument("--model_name", default=DEFAULT_MODEL_NAME, help="TF Serving model name")
    parser.add_argument("--model_version", type=int, default=None, help="a version (default: the served one)")
    parser.add_argument("--format", choices=REQUEST_FORMATS, default="instances", help="REST request format")
    parser.add_argument("--batch_size", type=int, default=32, help="images per request")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (each attempt)")
    parser.add_argument("--retries", type=int, default=3, help="more attempts after a refused connection, a "
                        "timeout, HTTP 429/5xx or gRPC UNAVAILABLE/DEADLINE_EXCEEDED/RESOURCE_EXHAUSTED")
    parser.add_argument("--backoff", type=float, default=0.5, help="seconds before the first retry, doubled for "
                        "each next one (at most 8)")
    parser.add_argument("--metadata", help="the export's metadata.json (or its version dir / DIR/NAME): class "
                        "names and the input shape")
    parser.add_argument("--npy", help="a .npy of float images [N, H, W, C] in [0, 1] (sent to serving_default)")
    parser.add_argument("files", nargs="*", help="JPEG/PNG files (sent as bytes to predict_images_bytes)")
    return parser


def _load_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ClientError(f"--npy={path}: cannot read a numpy array ({error})") from error


def _retry_policy(args) -> RetryPolicy:
    if args.retries < 0:
        raise ClientError(f"--retries={args.retries}: must be >= 0")
    if args.backoff < 0:
        raise ClientError(f"--backoff={args.backoff:g}: must be >= 0 seconds")
    return RetryPolicy(args.retries, args.backoff)


def _log_warnings_to_stderr(prog: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prog}: warning: %(message)s"))
    LOG.addHandler(handler)
    LOG.propagate = False


def main(argv: Optional[List[str]] = None, prog: str = "tf-fastbat-client") -> int:
    """The command; `prog` names it in its messages (the console script, or export/client.py's name)."""
    args = _parser(prog).parse_args(argv)
    _log_warnings_to_stderr(prog)
    try:
        if bool(args.files) == bool(args.npy):
            raise ClientError("give image files or --npy=PATH (exactly one of them)")
        if args.timeout <= 0:
            raise ClientError(f"--timeout={args.timeout:g}: must be positive seconds")
        retry = _retry_policy(args)
        metadata = read_metadata(args.metadata) if args.metadata else {}
        shape: Optional[Tuple[int, ...]] = tuple(metadata["input_shape"]) if metadata.get("input_shape") else None
        if args.rest:
            client = RestClient(args.rest, args.model_name, args.model_version, args.format, args.timeout, shape,
                                retry)
        else:
            client = GrpcClient(args.grpc, args.model_name, args.model_version, args.timeout, shape, retry=retry)
        if args.npy:
            outputs = client.predict(_load_npy(args.npy), args.batch_size)
            names = [f"{args.npy}[{i}]" for i in range(len(outputs["classes"]))]
        else:
            outputs = client.predict_bytes(read_image_files(args.files), args.batch_size)
            names = list(args.files)
    except ClientError as error:
        sys.stderr.write(f"{prog}: error: {error}\n")
        return 2
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


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main(prog="tf_fastbat.serving.client"))
