"""export.client against stand-ins for TF Serving built in the test: a loopback HTTP server speaking the REST
predict API (row "instances" and columnar "inputs" formats, {"b64": ...} bytes) and a gRPC PredictionService
from the tensorflow-serving-api protos, both running the exported SavedModel. References are the Keras model's
own logits on the same pixels (PNG decoded by Pillow, resizing in closed form)."""

import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from conftest import ROOT
from tf_fastbat.serving import client, protocol
from tf_fastbat.serving import saved_model

MODEL = "tiny"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ----------------------------------------------------------------------------------------------------------------
# Stand-ins for TensorFlow Serving.

def as_array(values, spec: tf.TensorSpec) -> np.ndarray:
    """A JSON tensor (nested lists; {"b64": ...} for bytes) as a numpy array of the signature input's dtype."""
    if spec.dtype == tf.string:
        return np.array([base64.b64decode(v["b64"]) if isinstance(v, dict) else v.encode() for v in values],
                        dtype=object)
    return np.asarray(values, dtype=spec.dtype.as_numpy_dtype)


class RestStandIn:
    """TF Serving's REST API, by running the SavedModel: POST /v1/models/<name>[/versions/<v>]:predict and
    GET /v1/models/<name>/metadata, serving the versions in `versions` (the newest when none is named).

    `faults` are consumed one per request (metadata or predict): each is None or a function of the request path
    returning None (answer normally, after whatever it did) or an (HTTP status, JSON body) to answer instead.
    """

    def __init__(self, loaded, model_name: str, versions=(1,)):
        self.signatures = loaded.signatures
        self.model_name = model_name
        self.versions = set(versions)
        self.faults = []
        self.requests = []  # (path, parsed JSON body) of every predict request that reached the server
        self.metadata_requests = []
        self.release = threading.Event()  # ends the waits of slow-server faults
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.reply(*stand_in.answer(self.path, self.rfile.read(int(self.headers["Content-Length"]))))

            def do_GET(self):
                self.reply(*stand_in.metadata(self.path))

            def reply(self, status, payload):
                body = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _fault(self, path: str):
        fault = self.faults.pop(0) if self.faults else None
        return fault(path) if fault else None

    def _missing(self, name: str, version):
        if name != self.model_name or not self.versions:
            return 404, {"error": f"Servable not found for request: Latest({name})"}
        if version is not None and int(version) not in self.versions:
            return 404, {"error": f"Servable not found for request: Specific({name}, {version})"}
        return None

    def metadata(self, path: str):
        self.metadata_requests.append(path)
        faulty = self._fault(path)
        if faulty:
            return faulty
        match = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/(\d+))?/metadata", path)
        if not match:
            return 404, {"error": f"Malformed request: GET {path}"}
        missing = self._missing(match.group(1), match.group(2))
        if missing:
            return missing
        version = match.group(2) or max(self.versions)
        return 200, {"model_spec": {"name": self.model_name, "signature_name": "", "version": str(version)},
                     "metadata": {"signature_def": {"signature_def": {name: {} for name in self.signatures}}}}

    def answer(self, path: str, raw: bytes):
        match = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:predict", path)
        if not match or match.group(1) != self.model_name:
            return 404, {"error": f"Servable not found for request: Latest({path})"}
        body = json.loads(raw)
        self.requests.append((path, body))
        faulty = self._fault(path)
        if faulty:
            return faulty
        missing = self._missing(match.group(1), match.group(2))
        if missing:
            return missing
        name = body.get("signature_name", "serving_default")
        if name not in self.signatures:
            return 400, {"error": f'Serving signature name: "{name}" not found in signature def'}
        signature = self.signatures[name]
        (input_name, spec), = signature.structured_input_signature[1].items()
        row_format = "instances" in body
        values = body["instances"] if row_format else body["inputs"]
        if isinstance(values, dict):
            values = values[input_name]
        elif row_format and values and isinstance(values[0], dict) and "b64" not in values[0]:
            values = [v[input_name] for v in values]
        try:
            outputs = {k: v.numpy() for k, v in signature(**{input_name: tf.constant(as_array(values, spec))}).items()}
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            return 400, {"error": getattr(error, "message", str(error))}
        if row_format:
            return 200, {"predictions": [{k: v[i].tolist() for k, v in outputs.items()}
                                         for i in range(len(outputs["logits"]))]}
        return 200, {"outputs": {k: v.tolist() for k, v in outputs.items()}}

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class GrpcStandIn(prediction_service_pb2_grpc.PredictionServiceServicer):
    """PredictionService.Predict and GetModelMetadata like TF Serving's, by running the SavedModel, serving the
    versions in `versions`; `faults` as in RestStandIn, a fault returning a (grpc.StatusCode, details) to abort."""

    def __init__(self, loaded, model_name: str, versions=(1,)):
        self.signatures = loaded.signatures
        self.model_name = model_name
        self.versions = set(versions)
        self.faults = []
        self.requests = []
        self.metadata_requests = []
        self.release = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(self, self.server)
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _check(self, context, model_spec, kind: str):
        fault = self.faults.pop(0) if self.faults else None
        faulty = fault(kind) if fault else None
        if faulty:
            context.abort(*faulty)
        if model_spec.name != self.model_name or not self.versions:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({model_spec.name})")
        if model_spec.HasField("version") and model_spec.version.value not in self.versions:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"Servable not found for request: Specific({model_spec.name}, {model_spec.version.value})")

    def GetModelMetadata(self, request, context):
        self.metadata_requests.append(request)
        self._check(context, request.model_spec, "metadata")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = max(self.versions)
        return response

    def Predict(self, request, context):
        self.requests.append(request)
        self._check(context, request.model_spec, "predict")
        name = request.model_spec.signature_name or "serving_default"
        if name not in self.signatures:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"Serving signature key \"{name}\" not found.")
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        try:
            outputs = self.signatures[name](**inputs)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, getattr(error, "message", str(error)))
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response

    def close(self):
        self.release.set()
        self.server.stop(None)


# ----------------------------------------------------------------------------------------------------------------
# Fixtures and references.

def small_classifier() -> keras.Model:
    """[0, 1] images -> normalization -> two conv-BN-ReLU layers -> pooling -> logits: these tests are about the
    wire formats, and a small model keeps its export and loading cheap (test_export.py covers a ResNet)."""
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Normalization(mean=[0.49, 0.48, 0.45], variance=[0.06, 0.06, 0.07], name="normalize")(inputs)
    for filters, stride in ((8, 1), (16, 2)):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


@pytest.fixture(scope="module")
def served(tmp_path_factory, cifar_slice):
    """A small classifier (a random head centred on the mean feature, so that classes vary), exported, behind both
    stand-ins."""
    keras.utils.set_random_seed(3)
    model = small_classifier()
    x_train = cifar_slice["x_train"][:64].astype(np.float32) / 255.0
    model(x_train, training=True)  # move the BN statistics
    mean_feature = keras.Model(model.input, model.get_layer("pool").output)(x_train).numpy().mean(0)
    kernel = np.random.default_rng(0).normal(0, 3, (len(mean_feature), 10)).astype(np.float32)
    model.get_layer("logits").set_weights([kernel, -(mean_feature @ kernel).astype(np.float32)])
    export_dir = tmp_path_factory.mktemp("exports")
    version_dir = saved_model.export_saved_model(model, str(export_dir), MODEL, {"class_names": CLASSES})
    loaded = tf.saved_model.load(version_dir)
    rest, rpc = RestStandIn(loaded, MODEL), GrpcStandIn(loaded, MODEL)
    yield {"model": model, "model_dir": os.path.join(export_dir, MODEL), "rest": rest, "grpc": rpc,
           "uint8": cifar_slice["x_test"][:10], "loaded": loaded}
    rest.close()
    rpc.close()


def reference(model, images: np.ndarray) -> dict:
    """The Keras model's logits, their softmax (numpy) and argmax."""
    logits = model(images, training=False).numpy().astype(np.float64)
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return {"logits": logits, "probabilities": shifted / shifted.sum(1, keepdims=True), "classes": logits.argmax(1)}


def assert_matches(outputs: dict, expected: dict) -> None:
    assert set(outputs) == {"logits", "probabilities", "classes"}
    assert outputs["logits"].dtype == np.float32 and outputs["classes"].dtype == np.int64
    assert np.abs(outputs["logits"] - expected["logits"]).max() <= 1e-4
    np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(outputs["classes"], expected["classes"])


def encode(image_uint8: np.ndarray, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image_uint8).save(buffer, format=kind)
    return buffer.getvalue()


def pil_decoded(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"), np.float32) / 255.0


# ----------------------------------------------------------------------------------------------------------------
# Tests.

@pytest.mark.parametrize("request_format", ["instances", "inputs"])
def test_rest_float_images_match_keras_in_batches(served, request_format):
    images = served["uint8"].astype(np.float32) / 255.0
    rest = served["rest"]
    seen = len(rest.requests)
    outputs = client.RestClient(rest.url, MODEL, request_format=request_format).predict(images, batch_size=4)
    expected = reference(served["model"], images)
    assert_matches(outputs, expected)
    assert len(set(expected["classes"])) > 1, "the classes must vary for the comparison to mean something"
    bodies = [body for _, body in rest.requests[seen:]]
    assert [body["signature_name"] for body in bodies] == ["serving_default"] * 3
    if request_format == "instances":
        assert [len(body["instances"]) for body in bodies] == [4, 4, 2]
        assert np.array_equal(np.asarray(bodies[0]["instances"], np.float32), images[:4])
    else:
        assert [len(body["inputs"]["images"]) for body in bodies] == [4, 4, 2]


def test_rest_image_bytes_go_as_b64_and_are_decoded_and_resized_in_the_graph(served, tmp_path):
    rest, model = served["rest"], served["model"]
    small = [encode(image) for image in served["uint8"][:3]]
    large_pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    large = encode(large_pixels)  # 64x64 -> 32x32: half-pixel bilinear at scale 2 averages each 2x2 block
    jpeg = encode(served["uint8"][3], "JPEG")
    seen = len(rest.requests)
    outputs = client.RestClient(rest.url, MODEL).predict_bytes(small + [large, jpeg], batch_size=8)
    (_, body), = rest.requests[seen:]
    assert body["signature_name"] == "predict_images_bytes"
    assert [base64.b64decode(item["b64"]) for item in body["instances"]] == small + [large, jpeg]
    box_average = large_pixels.astype(np.float64).reshape(32, 2, 32, 2, 3).mean(axis=(1, 3)) / 255.0
    pixels = np.stack([pil_decoded(b) for b in small] + [box_average.astype(np.float32)])
    expected = reference(model, pixels)
    assert np.abs(outputs["logits"][:4] - expected["logits"]).max() <= 1e-4
    np.testing.assert_array_equal(outputs["classes"][:4], expected["classes"])
    # JPEG: TF's decoder (the one the training pipeline uses) differs from Pillow's by a few levels.
    tf_decoded = tf.io.decode_jpeg(jpeg, channels=3).numpy()[None].astype(np.float32) / 255.0
    assert np.abs(tf_decoded - pil_decoded(jpeg)).max() <= 16 / 255
    assert np.abs(outputs["logits"][4:] - reference(model, tf_decoded)["logits"]).max() <= 1e-4


def test_grpc_float_images_and_bytes_match_keras(served):
    rpc, model = served["grpc"], served["model"]
    images = served["uint8"].astype(np.float32) / 255.0
    seen = len(rpc.requests)
    grpc_client = client.GrpcClient(rpc.target, MODEL, version=1)
    try:
        assert_matches(grpc_client.predict(images, batch_size=6), reference(model, images))
        blobs = [encode(image) for image in served["uint8"][:4]]
        assert_matches(grpc_client.predict_bytes(blobs, batch_size=3),
                       reference(model, np.stack([pil_decoded(b) for b in blobs])))
    finally:
        grpc_client.close()
    requests = rpc.requests[seen:]
    assert [(r.model_spec.signature_name, r.model_spec.version.value) for r in requests] == \
        [("serving_default", 1)] * 2 + [("predict_images_bytes", 1)] * 2
    assert [r.inputs["images"].tensor_shape.dim[0].size for r in requests[:2]] == [6, 4]
    assert list(requests[2].inputs["image_bytes"].string_val) == blobs[:3]


GOOD = np.full((2, 32, 32, 3), 0.5, np.float32)


@pytest.mark.parametrize("images,message", [
    (GOOD[0], r"shape \[batch, height, width, channels\], got shape \(32, 32, 3\) \(one image: add a batch axis"),
    (GOOD[:, :, :, :2], "must have 1 or 3 channels last"),
    (np.transpose(GOOD, (0, 3, 1, 2)), "channels-first arrays need a transpose"),
    ((GOOD * 255).astype(np.uint8), "must be floating-point values in \\[0, 1\\], got dtype uint8 .*images / 255"),
    (GOOD.astype(np.int64), "got dtype int64"),
    (GOOD * 255, r"must lie in \[0, 1\], found \[127.5, 127.5\]"),
    (GOOD - 0.75, r"found \[-0.25, -0.25\]"),
    (np.where(np.arange(3) == 1, np.nan, GOOD), "NaN or infinite"),
    (GOOD[:0], "no images to send"),
    ([[[[0.1]]], [[[0.1, 0.2]]]], "not a rectangular"),
])
def test_malformed_images_are_refused_before_sending(served, images, message):
    rest = served["rest"]
    seen = len(rest.requests)
    with pytest.raises(client.ClientError, match=message):
        client.RestClient(rest.url, MODEL).predict(images)
    with pytest.raises(client.ClientError, match="do not fit the model's input \\(32, 32, 3\\)"):
        client.RestClient(rest.url, MODEL, image_shape=(32, 32, 3)).predict(GOOD[:, :16])
    assert len(rest.requests) == seen, "nothing may be sent"


def test_malformed_bytes_are_refused_before_sending(served):
    rest = served["rest"]
    png = encode(served["uint8"][0])
    seen = len(rest.requests)
    cases = [([b"GIF89a...."], r"image 0: not a JPEG or PNG file \(it starts with b'GIF89a"),
             ([png, png[:100]], "image 1: the PNG data does not decode"),
             ([png, "text"], "image 1: expected the bytes of a JPEG or PNG file, got str"),
             (png, "a list of encoded files"), ([], "no images to send")]
    for blobs, message in cases:
        with pytest.raises(client.ClientError, match=message):
            client.RestClient(rest.url, MODEL).predict_bytes(blobs)
    assert len(rest.requests) == seen, "nothing may be sent"


def test_server_side_errors_come_back_as_serving_errors(served):
    rest, rpc = served["rest"], served["grpc"]
    rest_client = client.RestClient(rest.url, MODEL)
    seen = len(rest.requests)
    # What another client could send: the in-graph check names the offending element.
    with pytest.raises(client.ServingError,
                       match=r"HTTP 400 .*must be a JPEG or PNG file; these indices are not:\] \[0\]"):
        rest_client._send(protocol.BYTES_SIGNATURE, protocol.BYTES_INPUT, [b"plain text"])
    # Valid images of the wrong size (the client was not told the model's input shape): the signature's own check.
    with pytest.raises(client.ServingError,
                       match=r"HTTP 400 .*images must be float32 \[batch, 32, 32, 3\] in \[0, 1\]; "
                             r"got shape\] \[2 16 16 3\]"):
        rest_client.predict(GOOD[:, :16, :16])
    assert len(rest.requests) == seen + 2, "HTTP 400 is not retried"
    with pytest.raises(client.ServingError, match="HTTP 404 .*Servable not found"):
        client.RestClient(rest.url, "other").predict(GOOD)
    grpc_client = client.GrpcClient(rpc.target, MODEL)
    try:
        with pytest.raises(client.ServingError, match="gRPC INVALID_ARGUMENT .*must be a JPEG or PNG file"):
            grpc_client._send(protocol.BYTES_SIGNATURE, protocol.BYTES_INPUT, [b"plain text"])
    finally:
        grpc_client.close()
    other = client.GrpcClient(rpc.target, "other")
    try:
        with pytest.raises(client.ServingError, match="gRPC NOT_FOUND"):
            other.predict(GOOD)
    finally:
        other.close()
    with pytest.raises(client.ClientError, match="http:// or https://"):
        client.RestClient("localhost:8501", MODEL)


def run_client(*args):
    """python -X importtime -m export.client ...: the import log tells whether TensorFlow was loaded."""
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "export.client", *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)


def test_command_line_client_prints_one_json_line_per_input_without_tensorflow(served, tmp_path):
    rest, model = served["rest"], served["model"]
    files = []
    for index, image in enumerate(served["uint8"][:5]):
        files.append(tmp_path / f"{index}.png")
        files[-1].write_bytes(encode(image))
    result = run_client(f"--rest={rest.url}", f"--model_name={MODEL}", f"--metadata={served['model_dir']}",
                        "--request_batch_size=2", *map(str, files))
    assert result.returncode == 0, result.stderr[-2000:]
    assert not re.search(r"\| +tensorflow(\.|$)", result.stderr, re.M), "the REST client must not load TensorFlow"
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = reference(model, served["uint8"][:5].astype(np.float32) / 255.0)
    assert [row["input"] for row in rows] == list(map(str, files))
    assert [row["class"] for row in rows] == expected["classes"].tolist()
    assert [row["class_name"] for row in rows] == [CLASSES[k] for k in expected["classes"]]
    np.testing.assert_allclose([row["probability"] for row in rows], expected["probabilities"].max(1), atol=1e-5)

    np.save(tmp_path / "images.npy", served["uint8"][:3].astype(np.float32) / 255.0)
    result = run_client(f"--rest={rest.url}", f"--model_name={MODEL}", f"--npy={tmp_path / 'images.npy'}",
                        "--format=inputs")
    assert result.returncode == 0, result.stderr[-2000:]
    assert [json.loads(line)["class"] for line in result.stdout.splitlines()] == expected["classes"][:3].tolist()

    (tmp_path / "notes.png").write_text("not an image")
    np.save(tmp_path / "pixels.npy", served["uint8"][:3])
    for args, message in ([str(tmp_path / "notes.png")], "image 0: not a JPEG or PNG file"), \
                         ([f"--npy={tmp_path / 'pixels.npy'}"], "got dtype uint8"), \
                         ([str(tmp_path / "missing.png")], "missing.png: cannot read"), \
                         ([], "give image files or --npy=PATH"):
        result = run_client(f"--rest={rest.url}", *args)
        lines = [line for line in result.stderr.splitlines() if line.startswith("export.client: error:")]
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr[-1500:]
        assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------------------------
# Server faults: retries with backoff, then one line naming the server; a version that disappears.

FAST_RETRIES = client.RetryPolicy(retries=2, backoff=0.01)


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fresh(served):
    """Stand-ins of their own for a test that scripts faults or changes the served versions."""
    rest, rpc = RestStandIn(served["loaded"], MODEL), GrpcStandIn(served["loaded"], MODEL)
    yield rest, rpc
    rest.close()
    rpc.close()


def slow(seconds: float, stand_in):
    """A fault that answers normally, but only after `seconds` (or when the stand-in closes)."""
    return lambda _: stand_in.release.wait(seconds) and None


def unavailable(_):
    """A fault: HTTP 503, as TF Serving answers while a model loads."""
    return 503, {"error": "Model is loading"}


def grpc_unavailable(_):
    return grpc.StatusCode.UNAVAILABLE, "Socket closed"


def test_refused_connection_is_retried_with_backoff_then_reported_in_one_line(served, tmp_path):
    port = unused_port()
    sleeps = []
    rest_client = client.RestClient(f"http://127.0.0.1:{port}", MODEL, retry=FAST_RETRIES, sleep=sleeps.append)
    with pytest.raises(client.ServingError, match=rf"^model tiny at http://127.0.0.1:{port}: metadata failed: "
                                                  r".*connection refused \(3 attempts over [\d.]+ s\)$"):
        rest_client.predict(GOOD)
    assert sleeps == [0.01, 0.02]
    grpc_client = client.GrpcClient(f"127.0.0.1:{port}", MODEL, retry=FAST_RETRIES)
    try:
        with pytest.raises(client.ServingError, match=rf"^model tiny at 127.0.0.1:{port} \(gRPC\): metadata failed: "
                                                      r"gRPC UNAVAILABLE .*\(3 attempts over [\d.]+ s\)$"):
            grpc_client.predict(GOOD)
    finally:
        grpc_client.close()
    np.save(tmp_path / "images.npy", GOOD)
    result = run_client(f"--rest=http://127.0.0.1:{port}", f"--model_name={MODEL}", "--retries=1", "--backoff=0",
                        f"--npy={tmp_path / 'images.npy'}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and lines[-1].startswith("export.client: server error: model tiny at "
                                                           f"http://127.0.0.1:{port}: metadata failed"), result.stderr
    assert "connection refused (2 attempts" in lines[-1] and "Traceback" not in result.stderr


def test_slow_server_past_the_timeout_is_retried_then_reported(served, fresh):
    rest, rpc = fresh
    images = served["uint8"][:4].astype(np.float32) / 255.0
    expected = reference(served["model"], images)
    # Slow once: the retry gets the answer.
    rest.faults = [None, slow(5.0, rest)]
    outputs = client.RestClient(rest.url, MODEL, timeout=0.5, retry=FAST_RETRIES).predict(images)
    assert_matches(outputs, expected)
    assert len(rest.requests) == 2
    # Slow every time: three attempts of 0.5 s, then one line.
    rest.faults = [slow(5.0, rest)] * 3
    with pytest.raises(client.ServingError, match=rf"^model tiny at {rest.url}: metadata failed: .*no answer within "
                                                  r"0.5 s \(timeout\) \(3 attempts over [\d.]+ s\)$"):
        client.RestClient(rest.url, MODEL, timeout=0.5, retry=FAST_RETRIES).predict(images)
    rpc.faults = [None, slow(5.0, rpc)]
    grpc_client = client.GrpcClient(rpc.target, MODEL, timeout=0.5, retry=FAST_RETRIES)
    try:
        assert_matches(grpc_client.predict(images), expected)
        assert len(rpc.requests) == 2
        rpc.faults = [slow(5.0, rpc)] * 3
        with pytest.raises(client.ServingError, match=r"predict failed: gRPC DEADLINE_EXCEEDED .*no answer within "
                                                      r"0.5 s \(timeout\) \(3 attempts"):
            grpc_client.predict(images)
    finally:
        grpc_client.close()


def test_http_503_then_success_and_grpc_unavailable_then_success(served, fresh):
    rest, rpc = fresh
    images = served["uint8"][:6].astype(np.float32) / 255.0
    expected = reference(served["model"], images)
    rest.faults = [None, unavailable, unavailable]  # metadata fine, the first batch twice 503
    sleeps = []
    outputs = client.RestClient(rest.url, MODEL, retry=FAST_RETRIES, sleep=sleeps.append).predict(images, batch_size=4)
    assert_matches(outputs, expected)
    assert sleeps == [0.01, 0.02] and [len(body["instances"]) for _, body in rest.requests] == [4, 4, 4, 2]
    rest.faults = [None] + [unavailable] * 3
    with pytest.raises(client.ServingError, match=rf"^model tiny at {rest.url}: predict failed: HTTP 503 from "
                                                  r".*Model is loading \(3 attempts"):
        client.RestClient(rest.url, MODEL, retry=FAST_RETRIES).predict(images)
    rpc.faults = [grpc_unavailable, None, grpc_unavailable]  # the metadata call and the first batch once each
    grpc_client = client.GrpcClient(rpc.target, MODEL, retry=FAST_RETRIES)
    try:
        assert_matches(grpc_client.predict(images, batch_size=4), expected)
        assert len(rpc.requests) == 3 and len(rpc.metadata_requests) == 2
        rpc.faults = [grpc_unavailable] * 3
        with pytest.raises(client.ServingError, match=r"predict failed: gRPC UNAVAILABLE .*Socket closed \(3 attempts"):
            grpc_client.predict(images)
    finally:
        grpc_client.close()


def test_version_that_disappears_before_or_during_the_request_is_reported_or_replaced(served, fresh, caplog):
    rest, rpc = fresh
    images = served["uint8"].astype(np.float32) / 255.0
    expected = reference(served["model"], images)

    def replace_version(stand_in):
        def fault(_):
            stand_in.versions = {2}  # version 2 (here the same SavedModel) replaced version 1
        return fault

    # REST: the metadata call says 1; it is gone after the first of three batches; all three go again to 2.
    rest.faults = [None, None, replace_version(rest)]
    rest_client = client.RestClient(rest.url, MODEL)
    with caplog.at_level("WARNING", logger="tf_fastbat.serving.client"):
        outputs = rest_client.predict(images, batch_size=4)
    assert_matches(outputs, expected)
    assert rest_client.answered_version == 2
    assert [path.split("/")[-1] for path, _ in rest.requests] == \
        ["1:predict", "1:predict", "2:predict", "2:predict", "2:predict"]
    assert [r.getMessage() for r in caplog.records] == [
        f"model tiny at {rest.url}: version 1 disappeared during the request (HTTP 404 from "
        f"{rest.url}/v1/models/tiny/versions/1:predict: Servable not found for request: Specific(tiny, 1)); "
        "sent all 3 batches again to version 2"]
    # An explicit version that is gone is an error naming the served one.
    with pytest.raises(client.ServingError, match=r"version 1 is not served \(HTTP 404 .*Specific\(tiny, 1\)\); the "
                                                  r"server serves version 2 \(leave the version out to use it\)"):
        client.RestClient(rest.url, MODEL, version=1).predict(images)
    # gRPC: gone between the metadata call and the predict call.
    rpc.faults = [None, replace_version(rpc)]
    caplog.clear()
    grpc_client = client.GrpcClient(rpc.target, MODEL)
    try:
        with caplog.at_level("WARNING", logger="tf_fastbat.serving.client"):
            assert_matches(grpc_client.predict(images), expected)
        assert [r.model_spec.version.value for r in rpc.requests] == [1, 2]
        assert grpc_client.answered_version == 2 and len(caplog.records) == 1
        assert "version 1 disappeared during the request (gRPC NOT_FOUND" in caplog.records[0].getMessage()
    finally:
        grpc_client.close()
