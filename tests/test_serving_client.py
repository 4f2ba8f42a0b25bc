"""export.client against stand-ins for TF Serving built in the test: a loopback HTTP server speaking the REST
predict API (row "instances" and columnar "inputs" formats, {"b64": ...} bytes) and a gRPC PredictionService
from the tensorflow-serving-api protos, both running the exported SavedModel. References are the Keras model's
own logits on the same pixels (PNG decoded by Pillow, resizing in closed form)."""

import base64
import io
import json
import os
import re
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
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import ROOT
from export import client
from tf_fastbat import export

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
    """POST /v1/models/<name>[/versions/<v>]:predict like TF Serving's REST API, by running the SavedModel."""

    def __init__(self, loaded, model_name: str):
        self.signatures = loaded.signatures
        self.model_name = model_name
        self.requests = []  # (path, parsed JSON body) of every predict request that reached the server
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                status, payload = stand_in.answer(self.path, self.rfile.read(int(self.headers["Content-Length"])))
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path: str, raw: bytes):
        match = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:predict", path)
        if not match or match.group(1) != self.model_name:
            return 404, {"error": f"Servable not found for request: Latest({path})"}
        body = json.loads(raw)
        self.requests.append((path, body))
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
        self.server.shutdown()
        self.server.server_close()


class GrpcStandIn(prediction_service_pb2_grpc.PredictionServiceServicer):
    """PredictionService.Predict like TF Serving's, by running the SavedModel."""

    def __init__(self, loaded, model_name: str):
        self.signatures = loaded.signatures
        self.model_name = model_name
        self.requests = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(self, self.server)
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def Predict(self, request, context):
        self.requests.append(request)
        if request.model_spec.name != self.model_name:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"Servable not found for request: Latest({request.model_spec.name})")
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
    version_dir = export.export_saved_model(model, str(export_dir), MODEL, {"class_names": CLASSES})
    loaded = tf.saved_model.load(version_dir)
    rest, rpc = RestStandIn(loaded, MODEL), GrpcStandIn(loaded, MODEL)
    yield {"model": model, "model_dir": os.path.join(export_dir, MODEL), "rest": rest, "grpc": rpc,
           "uint8": cifar_slice["x_test"][:10]}
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
    # What another client could send: the in-graph check names the offending element.
    with pytest.raises(client.ServingError,
                       match=r"HTTP 400 .*must be a JPEG or PNG file; these indices are not:\] \[0\]"):
        rest_client._send(client.BYTES_SIGNATURE, client.BYTES_INPUT, [b"plain text"])
    # Valid images of the wrong size (the client was not told the model's input shape): the signature's own check.
    with pytest.raises(client.ServingError,
                       match=r"HTTP 400 .*images must be float32 \[batch, 32, 32, 3\] in \[0, 1\]; "
                             r"got shape\] \[2 16 16 3\]"):
        rest_client.predict(GOOD[:, :16, :16])
    with pytest.raises(client.ServingError, match="HTTP 404 .*Servable not found"):
        client.RestClient(rest.url, "other").predict(GOOD)
    with pytest.raises(client.ServingError, match="cannot reach http://127.0.0.1:9/v1/models/tiny:predict"):
        client.RestClient("http://127.0.0.1:9", MODEL, timeout=5).predict(GOOD)
    grpc_client = client.GrpcClient(rpc.target, MODEL)
    try:
        with pytest.raises(client.ServingError, match="gRPC INVALID_ARGUMENT .*must be a JPEG or PNG file"):
            grpc_client._send(client.BYTES_SIGNATURE, client.BYTES_INPUT, [b"plain text"])
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
                        "--batch_size=2", *map(str, files))
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
