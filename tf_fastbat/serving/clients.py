"""REST (JSON, base64 image bytes) and gRPC Predict clients of a tf_fastbat classifier on TensorFlow Serving.

Requests go in batches, all to one model version (the served one, looked up first, unless pinned). Refused
connections, timeouts, HTTP 429/5xx and gRPC UNAVAILABLE are retried with exponential backoff, then reported in one
line naming the server; a version that disappears mid-request is reported, and the request sent again to the
version now served. The REST client needs only numpy; the gRPC client needs grpcio, tensorflow-serving-api and
TensorFlow.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from tf_fastbat.serving import retries
from tf_fastbat.serving.protocol import BYTES_INPUT, BYTES_SIGNATURE, DEFAULT_MODEL_NAME, IMAGES_INPUT, IMAGES_SIGNATURE
from tf_fastbat.serving.requests import ClientError, validate_image_bytes, validate_images
from tf_fastbat.serving.retries import RetryPolicy

REQUEST_FORMATS = ("instances", "inputs")
_OUTPUT_DTYPES = {"logits": np.float32, "probabilities": np.float32, "classes": np.int64}
RETRYABLE_HTTP = frozenset({429, 500, 502, 503, 504})
RETRYABLE_GRPC = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})
LOG = logging.getLogger("tf_fastbat.serving.client")


class ServingError(RuntimeError):
    """The server failed the request, or could not be reached; the message carries the server's own."""


def _one_line(message: str) -> str:
    """A multi-line server message (TF's graph errors span several lines) on one line."""
    return " ".join(str(message).split())


class NotServed(ServingError):
    """The server does not serve the model, or the version, a request named (HTTP 404, gRPC NOT_FOUND)."""


def _describe_oserror(error: BaseException, timeout: float) -> str:
    """What a socket-level failure was, in a few words."""
    reason = getattr(error, "reason", error)
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g} s (timeout)"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, ConnectionError):
        return f"connection lost ({type(reason).__name__}: {reason})"
    return f"cannot connect ({reason})"


class _PredictClient:
    """Validation, batching, retries and version pinning shared by the REST and gRPC clients.

    Without an explicit version, the served version is looked up once (the server's metadata) and every batch of
    a request goes to it, so that one answer never mixes two models. If that version disappears before or during
    the request (a new export replaced it), the client logs it and sends the whole request again to the version
    now served; with an explicit version, that is an error naming both versions.
    """

    def __init__(self, model_name: str, version: Optional[int], timeout: float,
                 image_shape: Optional[Sequence[int]], retry: Optional[RetryPolicy] = None,
                 sleep: Callable[[float], None] = time.sleep):
        if version is not None and int(version) < 1:
            raise ClientError(f"model version must be a positive integer, got {version}")
        if timeout <= 0:
            raise ClientError(f"timeout must be positive seconds, got {timeout}")
        self.model_name = model_name
        self.version = None if version is None else int(version)
        self.timeout = timeout
        self.image_shape = None if image_shape is None else tuple(int(d) for d in image_shape)
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._served: Optional[int] = None
        self.answered_version: Optional[int] = None  # the version that answered the last request

    @property
    def server(self) -> str:
        """Where requests go, for messages."""
        raise NotImplementedError

    def predict(self, images, batch_size: int = 64) -> Dict[str, np.ndarray]:
        """logits, probabilities and classes of [N, H, W, C] float images in [0, 1] (serving_default)."""
        return self._in_batches(IMAGES_SIGNATURE, IMAGES_INPUT, validate_images(images, self.image_shape),
                                batch_size)

    def predict_bytes(self, blobs: Sequence[bytes], batch_size: int = 64) -> Dict[str, np.ndarray]:
        """The same outputs for encoded JPEG/PNG files, decoded and resized by the server (predict_images_bytes)."""
        return self._in_batches(BYTES_SIGNATURE, BYTES_INPUT, validate_image_bytes(blobs), batch_size)

    def served_version(self) -> int:
        """The version the server serves for the model now (its metadata call, with retries)."""
        self._served = self._retrying("metadata", self._metadata_version)
        return self._served

    def _retrying(self, what: str, attempt: Callable[[], Any]):
        try:
            return retries.call(attempt, self.retry, self._sleep)
        except retries.GaveUp as failure:
            raise ServingError(f"{self.server}: {what} failed: {failure}") from None

    def _in_batches(self, signature: str, input_name: str, values, batch_size: int) -> Dict[str, np.ndarray]:
        if batch_size < 1:
            raise ClientError(f"batch_size must be >= 1, got {batch_size}")
        version = self.version or self._served or self.served_version()
        for _ in range(self.retry.retries + 1):
            try:
                parts = [self._retrying("predict", functools.partial(self._send, signature, input_name,
                                                                     values[start:start + batch_size], version))
                         for start in range(0, len(values), batch_size)]
            except NotServed as missing:
                version = self._version_gone(version, missing, batches=-(-len(values) // batch_size))
                continue
            self.answered_version = version
            return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        raise ServingError(f"{self.server}: the served version kept changing during the request "
                           f"({self.retry.retries + 1} attempts)")

    def _version_gone(self, version: int, missing: NotServed, batches: int) -> int:
        """The version to send the request to again after `version` was not found, or the error to report."""
        try:
            current = self.served_version()
        except ServingError:
            raise missing from None
        if self.version is not None:
            raise ServingError(f"{self.server}: version {version} is not served ({missing}); the server serves "
                               f"version {current} (leave the version out to use it)") from None
        if current == version:
            raise missing
        LOG.warning("%s: version %d disappeared during the request (%s); sent all %d batches again to version %d",
                    self.server, version, missing, batches, current)
        return current

    def _metadata_version(self) -> int:
        raise NotImplementedError

    def _send(self, signature: str, input_name: str, batch, version: Optional[int] = None) -> Dict[str, np.ndarray]:
        raise NotImplementedError


def _as_output(name: str, value) -> np.ndarray:
    return np.asarray(value, dtype=_OUTPUT_DTYPES.get(name))


class RestClient(_PredictClient):
    """TF Serving's REST predict API: POST {url}/v1/models/{name}[/versions/{v}]:predict with JSON."""

    def __init__(self, url: str, model_name: str = DEFAULT_MODEL_NAME, version: Optional[int] = None,
                 request_format: str = "instances", timeout: float = 60.0,
                 image_shape: Optional[Sequence[int]] = None, retry: Optional[RetryPolicy] = None,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__(model_name, version, timeout, image_shape, retry, sleep)
        if request_format not in REQUEST_FORMATS:
            raise ClientError(f"request format must be one of {', '.join(REQUEST_FORMATS)}, got {request_format!r}")
        if not url.startswith(("http://", "https://")):
            raise ClientError(f"REST url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.request_format = request_format

    @property
    def server(self) -> str:
        return f"model {self.model_name} at {self.url}"

    def endpoint_for(self, version: Optional[int], verb: str = ":predict") -> str:
        versioned = f"/versions/{version}" if version is not None else ""
        return f"{self.url}/v1/models/{self.model_name}{versioned}{verb}"

    @property
    def endpoint(self) -> str:
        return self.endpoint_for(self.version)

    def request_body(self, signature: str, input_name: str, batch) -> Dict:
        """The JSON request: row format ("instances") or columnar ("inputs"); bytes as {"b64": ...}."""
        if input_name == BYTES_INPUT:
            values = [{"b64": base64.b64encode(blob).decode("ascii")} for blob in batch]
        else:
            values = np.asarray(batch, np.float32).tolist()
        if self.request_format == "instances":
            return {"signature_name": signature, "instances": values}
        return {"signature_name": signature, "inputs": {input_name: values}}

    def _call(self, request: urllib.request.Request) -> Dict:
        """One HTTP exchange: the JSON answer, Transient for what may pass, NotServed for 404, else ServingError."""
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            message = f"HTTP {error.code} from {request.full_url}: {_one_line(_error_message(error))}"
            if error.code in RETRYABLE_HTTP:
                raise retries.Transient(message) from error
            raise (NotServed if error.code == 404 else ServingError)(message) from error
        except (urllib.error.URLError, OSError) as error:  # refused, timed out, reset
            raise retries.Transient(f"{request.full_url}: {_describe_oserror(error, self.timeout)}") from error
        except ValueError as error:
            raise ServingError(f"no usable answer from {request.full_url}: {error}") from error

    def _metadata_version(self) -> int:
        payload = self._call(urllib.request.Request(self.endpoint_for(None, "/metadata"), method="GET"))
        try:
            return int(payload["model_spec"]["version"])
        except (KeyError, TypeError, ValueError) as error:
            raise ServingError(f"{self.server}: metadata without a model version: {str(payload)[:200]}") from error

    def _send(self, signature: str, input_name: str, batch, version: Optional[int] = None) -> Dict[str, np.ndarray]:
        body = json.dumps(self.request_body(signature, input_name, batch)).encode("utf-8")
        request = urllib.request.Request(self.endpoint_for(self.version if version is None else version), data=body,
                                         method="POST", headers={"Content-Type": "application/json"})
        return parse_rest_response(self._call(request))


def _error_message(error: urllib.error.HTTPError) -> str:
    """TF Serving's {"error": ...} body of an HTTP error, else the raw body or reason."""
    try:
        text = error.read().decode("utf-8", "replace")
    except OSError:
        return str(error.reason)
    try:
        return str(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        return text.strip() or str(error.reason)


def parse_rest_response(payload: Dict) -> Dict[str, np.ndarray]:
    """Outputs by name from a "predictions" (row) or "outputs" (columnar) response."""
    if "error" in payload:
        raise ServingError(_one_line(payload["error"]))
    if "predictions" in payload:
        rows = payload["predictions"]
        if rows and isinstance(rows[0], dict):
            return {name: _as_output(name, [row[name] for row in rows]) for name in rows[0]}
        return {"predictions": np.asarray(rows)}
    if "outputs" in payload:
        outputs = payload["outputs"]
        if isinstance(outputs, dict):
            return {name: _as_output(name, value) for name, value in outputs.items()}
        return {"outputs": np.asarray(outputs)}
    raise ServingError(f"unexpected response (no predictions, outputs or error): {str(payload)[:200]}")


class GrpcClient(_PredictClient):
    """TF Serving's gRPC PredictionService.Predict (default port 8500)."""

    def __init__(self, target: str, model_name: str = DEFAULT_MODEL_NAME, version: Optional[int] = None,
                 timeout: float = 60.0, image_shape: Optional[Sequence[int]] = None, channel=None,
                 retry: Optional[RetryPolicy] = None, sleep: Callable[[float], None] = time.sleep):
        super().__init__(model_name, version, timeout, image_shape, retry, sleep)
        try:
            import grpc
            from tensorflow_serving.apis import prediction_service_pb2_grpc
        except ImportError as error:
            raise ClientError(f"the gRPC client needs grpcio, tensorflow and tensorflow-serving-api ({error}); "
                              "pip install grpcio && pip install --no-deps tensorflow-serving-api") from error

        self.target = target
        self._grpc = grpc
        self._channel = channel or grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    @property
    def server(self) -> str:
        return f"model {self.model_name} at {self.target} (gRPC)"

    def request(self, signature: str, input_name: str, batch, version: Optional[int] = None):
        """The PredictRequest protobuf for one batch."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature
        version = self.version if version is None else version
        if version is not None:
            request.model_spec.version.value = version
        if input_name == BYTES_INPUT:
            tensor = tf.make_tensor_proto(list(batch), dtype=tf.string, shape=[len(batch)])
        else:
            tensor = tf.make_tensor_proto(np.asarray(batch, np.float32))
        request.inputs[input_name].CopyFrom(tensor)
        return request

    def _call(self, method, request):
        """One RPC: its response, Transient for what may pass, NotServed for NOT_FOUND, else ServingError."""
        try:
            return method(request, timeout=self.timeout)
        except self._grpc.RpcError as error:
            code = error.code()
            details = _one_line(error.details() or "")
            if code == self._grpc.StatusCode.DEADLINE_EXCEEDED:
                details = f"no answer within {self.timeout:g} s (timeout)"
            message = f"gRPC {code.name} from {self.target}: {details}"
            if code.name in RETRYABLE_GRPC:
                raise retries.Transient(message) from error
            raise (NotServed if code == self._grpc.StatusCode.NOT_FOUND else ServingError)(message) from error

    def _metadata_version(self) -> int:
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = self.model_name
        request.metadata_field.append("signature_def")
        return int(self._call(self._stub.GetModelMetadata, request).model_spec.version.value)

    def _send(self, signature: str, input_name: str, batch, version: Optional[int] = None) -> Dict[str, np.ndarray]:
        import tensorflow as tf

        response = self._call(self._stub.Predict, self.request(signature, input_name, batch, version))
        return {name: _as_output(name, tf.make_ndarray(tensor)) for name, tensor in response.outputs.items()}

    def close(self) -> None:
        self._channel.close()
