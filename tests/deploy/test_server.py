"""tfssd-serve as a client meets it: a real server process on 127.0.0.1, both contracts, bad
requests, the full queue and a bounded load run; the batcher and the container defaults alone."""

import asyncio
import base64
import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse

import numpy as np
import pytest
import tensorflow as tf
from absl import app
from PIL import Image

from tfssd.cli import load_test as load
from tfssd.cli import serve
from tfssd.deploy import contracts as serving_formats
from tfssd.deploy import saved_model as export
from tfssd.deploy import server as serving
from tfssd.model.ssd import ssd_network

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVE_SCRIPT = os.path.join(ROOT, "docker", "serve")
MAIN_FLAGS = ["--batch_timeout_ms=20", "--max_body_bytes=1000000", "--max_image_pixels=1000000"]


def _encoded(seed: int, width: int, height: int, format: str) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def _flat_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, format="PNG")
    return buffer.getvalue()  # a few kB: over the pixel limit, not the body limit


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def call(url: str, method: str = "GET", body: bytes | None = None,
         content_type: str | None = None, accept: str | None = None) -> tuple[int, dict, bytes]:
    """One request to the test's own server on 127.0.0.1: (status, headers, body)."""
    headers = {"Content-Type": content_type} if content_type else {}
    if accept:
        headers["Accept"] = accept
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request(method, parts.path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def post_json(url: str, document, content_type: str = "application/json"):
    status, headers, body = call(url, "POST", json.dumps(document).encode(), content_type)
    assert status == 200, body
    return json.loads(body)


def assert_same_prediction(got: dict, expected: dict) -> None:
    """Two SageMaker responses agree: the same rows, numbers to float32 rounding."""
    assert set(got) == {"prediction"}
    assert len(got["prediction"]) == len(expected["prediction"]) > 0
    np.testing.assert_allclose(got["prediction"], expected["prediction"], atol=1e-5)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A random-weight model exported, served twice, and predicted by tfssd-predict meanwhile.

    main: batching on, small body and pixel limits; small: started as SageMaker starts it
    (docker/serve), batching off (max_batch_size=1), max_queue=1, model_name=detector, its
    port from SAGEMAKER_BIND_TO_PORT.
    """
    work = tmp_path_factory.mktemp("serving")
    ssd = ssd_network("vgg-16", 3, 128, width_multiplier=0.0625)
    model_dir = export.export_saved_model(ssd.model, ssd.anchors, str(work / "export"),
                                          image_size=128, class_names=["a", "b", "c"],
                                          nms_threshold=0.45)
    images = {"jpeg": _encoded(0, 200, 150, "JPEG"), "png": _encoded(1, 90, 120, "PNG")}
    paths = [str(work / "image.jpg"), str(work / "image.png")]
    for path, data in zip(paths, images.values()):
        with open(path, "wb") as f:
            f.write(data)
    main_port, small_port = load.free_port(), load.free_port()
    main = load.ServerProcess([f"--model={work / 'export'}", f"--port={main_port}", *MAIN_FLAGS],
                              main_port, log_path=str(work / "main.log"))
    # SageMaker's entry, docker/serve (it binds 0.0.0.0; the --host=127.0.0.1 after it wins).
    small = load.ServerProcess([f"--model={model_dir}", "--max_batch_size=1", "--max_queue=1",
                                "--model_name=detector"], small_port,
                               env={**os.environ, "SAGEMAKER_BIND_TO_PORT": str(small_port),
                                    "PATH": os.path.dirname(sys.executable) + os.pathsep
                                    + os.environ.get("PATH", "")},
                               log_path=str(work / "small.log"), command=["sh", SERVE_SCRIPT])
    predicted = subprocess.Popen([sys.executable, "-m", "tfssd.cli.predict", "--json",
                                  f"--saved_model={work / 'export'}", *paths],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = predicted.communicate(timeout=180)
        assert predicted.returncode == 0, stderr[-3000:]
        main.wait_ready()
        small.wait_ready()
        yield {"main": main, "small": small, "images": images, "model_dir": model_dir,
               "predict": [json.loads(line) for line in stdout.strip().splitlines()]}
    finally:
        predicted.kill()
        main.stop()
        small.stop()


@pytest.mark.slow
def test_ping_model_status_and_execution_parameters(served):
    url = served["main"].url
    status, _, body = call(url + "/ping")
    assert status == 200
    assert json.loads(body).keys() == {"status", "model", "version", "batches", "images",
                                       "connections"}
    for path in ("/v1/models/ssd", "/v1/models/ssd/versions/1"):
        status, _, body = call(url + path)
        assert status == 200
        assert json.loads(body) == {"model_version_status": [{
            "version": "1", "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]}
    status, _, body = call(url + "/execution-parameters")
    assert json.loads(body) == {"MaxConcurrentTransforms": 8, "BatchStrategy": "MULTI_RECORD",
                                "MaxPayloadInMB": 1}


@pytest.mark.slow
@pytest.mark.parametrize("server", ["main", "small"])
def test_sagemaker_image_bodies_equal_tfssd_predict(served, server):
    jpeg, png = served["images"]["jpeg"], served["images"]["png"]
    for body, content_type, expected in ((jpeg, "image/jpeg", served["predict"][0]),
                                         (png, "image/png", served["predict"][1]),
                                         (jpeg, "application/x-image", served["predict"][0])):
        status, headers, answer = call(served[server].url + "/invocations", "POST", body,
                                       content_type)
        assert status == 200, answer
        assert headers["Content-Type"].startswith("application/json")
        assert_same_prediction(json.loads(answer), expected)


@pytest.mark.slow
def test_sagemaker_json_and_json_lines_carry_several_images(served):
    url = served["main"].url + "/invocations"
    images = [served["images"]["jpeg"], served["images"]["png"]]
    answer = post_json(url, {"instances": [{"b64": _b64(data)} for data in images]})
    assert len(answer["predictions"]) == 2
    for got, expected in zip(answer["predictions"], served["predict"]):
        assert_same_prediction(got, expected)
    lines = "".join(json.dumps({"b64": _b64(data)}) + "\n" for data in images).encode()
    status, headers, body = call(url, "POST", lines, "application/jsonlines")
    assert status == 200 and headers["Content-Type"].startswith("application/jsonlines")
    answers = body.decode().splitlines()
    assert len(answers) == 2
    for got, expected in zip(answers, served["predict"]):
        assert_same_prediction(json.loads(got), expected)


@pytest.mark.slow
def test_tf_serving_predict_equals_the_saved_model(served):
    images = [served["images"]["jpeg"], served["images"]["png"]]
    signature = tf.saved_model.load(served["model_dir"]).signatures["serving_default"]
    expected = {k: v.numpy() for k, v in signature(images=tf.constant(images)).items()}
    url = served["main"].url + "/v1/models/ssd"
    rows = post_json(url + ":predict", {"signature_name": "serving_default",
                                        "instances": [{"b64": _b64(i)} for i in images]})
    assert len(rows["predictions"]) == 2
    for n, row in enumerate(rows["predictions"]):
        assert set(row) == set(expected)
        assert np.asarray(row["detection_boxes"]).shape == (200, 4)
        for key, value in row.items():
            np.testing.assert_allclose(value, expected[key][n], atol=1e-5)
    named = post_json(url + "/versions/1:predict",
                      {"instances": [{"images": {"b64": _b64(images[1])}}]})
    np.testing.assert_allclose(named["predictions"][0]["detection_scores"],
                               expected["detection_scores"][1], atol=1e-5)
    columns = post_json(url + ":predict", {"inputs": {"images": [{"b64": _b64(images[0])}]}})
    np.testing.assert_allclose(columns["outputs"]["detection_boxes"][0],
                               expected["detection_boxes"][0], atol=1e-5)


def _jsonl(*documents) -> bytes:
    return "".join((d if isinstance(d, str) else json.dumps(d)) + "\n"
                   for d in documents).encode()


BAD_REQUESTS = {  # name: (method, path, content type, body from the images, status, message)
    "empty image body": ("POST", "/invocations", "image/jpeg", lambda i: b"", 400,
                         "request body: empty file"),
    "not an image": ("POST", "/invocations", "image/png", lambda i: b"hello, world", 400,
                     "request body: not an image"),
    "truncated image": ("POST", "/invocations", "image/jpeg",
                        lambda i: i["jpeg"][:len(i["jpeg"]) // 2], 400, "truncated"),
    "unsupported content type": ("POST", "/invocations", "text/plain", lambda i: b"x", 415,
                                 "unsupported Content-Type 'text/plain'"),
    "body over the size limit": ("POST", "/invocations", "image/jpeg",
                                 lambda i: b"\xff" * 1_200_000, 413,
                                 "over the limit of 1000000 bytes"),
    "image over the pixel limit": ("POST", "/invocations", "image/png",
                                   lambda i: _flat_png(1200, 1000), 400,
                                   "more than the limit of 1 megapixels"),
    "malformed JSON": ("POST", "/invocations", "application/json",
                       lambda i: b'{"instances": [', 400, "malformed JSON"),
    "JSON without instances": ("POST", "/invocations", "application/json",
                               lambda i: b'{"images": []}', 400, '{"instances": ['),
    "bad base64": ("POST", "/invocations", "application/json",
                   lambda i: json.dumps({"instances": [{"b64": "not*base64"}]}).encode(), 400,
                   "instances[0].b64: not valid base64"),
    "bad JSON line": ("POST", "/invocations", "application/jsonlines",
                      lambda i: _jsonl({"b64": _b64(i["jpeg"])}, "{oops"), 400,
                      "line 2: malformed JSON"),
    "JSON line not an image": ("POST", "/invocations", "application/jsonlines",
                               lambda i: _jsonl({"b64": _b64(b"hello")}), 400,
                               "line 1: not an image"),
    "wrong model name": ("POST", "/v1/models/other:predict", "application/json",
                         lambda i: json.dumps({"instances": [{"b64": _b64(i["jpeg"])}]}).encode(),
                         404, "model 'other' not found; this server serves 'ssd'"),
    "wrong model version": ("POST", "/v1/models/ssd/versions/7:predict", "application/json",
                            lambda i: b"{}", 404, "version 7 of model 'ssd' not found"),
    "status of a wrong model": ("GET", "/v1/models/other", None, lambda i: None, 404,
                                "model 'other' not found"),
    "wrong signature": ("POST", "/v1/models/ssd:predict", "application/json",
                        lambda i: json.dumps({"signature_name": "serving_images",
                                              "instances": [{"b64": _b64(i["jpeg"])}]}).encode(),
                        400, "signature_name 'serving_images' is not served"),
    "TF Serving instance not an image": (
        "POST", "/v1/models/ssd:predict", "application/json",
        lambda i: json.dumps({"instances": [{"b64": _b64(b"hello")}]}).encode(), 400,
        "instances[0]: not an image"),
    "TF Serving instance not b64": (
        "POST", "/v1/models/ssd:predict", "application/json",
        lambda i: json.dumps({"instances": [[1, 2, 3]]}).encode(), 400,
        'instances[0]: expected {"b64"'),
    "wrong method": ("GET", "/invocations", None, lambda i: None, 405,
                     "method GET not allowed on /invocations; allowed: POST"),
    "unknown path": ("POST", "/predict", "image/jpeg", lambda i: i["jpeg"], 404,
                     "no such path /predict"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_gets_a_json_error_and_the_server_goes_on(served, name):
    method, path, content_type, make_body, expected_status, message = BAD_REQUESTS[name]
    url = served["main"].url
    status, headers, body = call(url + path, method, make_body(served["images"]), content_type)
    assert status == expected_status, body
    assert headers["Content-Type"].startswith("application/json")
    assert message in json.loads(body)["error"]
    assert call(url + "/ping")[0] == 200
    status, _, body = call(url + "/invocations", "POST", served["images"]["png"], "image/png")
    assert status == 200, body


@pytest.mark.slow
def test_chunked_body_over_the_size_limit(served):
    url = served["main"].url
    connection = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=60)
    connection.request("POST", "/invocations", body=iter([b"\xff" * 100_000] * 12),
                       headers={"Content-Type": "image/jpeg"}, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413
    assert "over the limit" in json.loads(response.read())["error"]
    connection.close()
    assert call(url + "/ping")[0] == 200


@pytest.mark.slow
def test_full_queue_answers_503_with_retry_after(served):
    url, jpeg = served["small"].url, served["images"]["jpeg"]  # max_queue=1
    assert json.loads(call(url + "/ping")[2])["model"] == "detector"
    background = {}
    thread = threading.Thread(target=lambda: background.update(result=load.measure(
        url, "/invocations", jpeg, "image/jpeg", concurrency=4, seconds=3)))
    thread.start()
    busy = None
    deadline = time.monotonic() + 3
    while busy is None and time.monotonic() < deadline:
        status, headers, body = call(url + "/invocations", "POST", jpeg, "image/jpeg")
        assert status in (200, 503), body
        if status == 503:
            busy = headers, json.loads(body)
    thread.join(timeout=60)
    assert busy is not None, "no 503 with max_queue=1 and 5 clients"
    assert busy[0]["Retry-After"] == "1" and "--max_queue" in busy[1]["error"]
    statuses = background["result"].statuses
    assert set(statuses) <= {200, 503} and statuses[200] > 0 and statuses[503] > 0, statuses
    assert call(url + "/ping")[0] == 200


@pytest.mark.slow
def test_load_with_bad_requests_mixed_in_keeps_serving_and_memory_flat(served):
    server, jpeg = served["main"], served["images"]["jpeg"]
    load.measure(server.url, "/invocations", jpeg, "image/jpeg", concurrency=8, seconds=2)
    before, counts_before = rss_kib(server.pid), load.batch_counts(server.url)
    bad_statuses = []

    def bad_client(stop: float) -> None:
        bodies = [(b"hello", "image/jpeg"), (jpeg[:500], "image/jpeg"), (b"{", "application/json")]
        while time.monotonic() < stop:
            body, content_type = bodies[len(bad_statuses) % len(bodies)]
            bad_statuses.append(call(server.url + "/invocations", "POST", body, content_type)[0])
            time.sleep(0.02)

    thread = threading.Thread(target=bad_client, args=(time.monotonic() + 10,))
    thread.start()
    result = load.measure(server.url, "/invocations", jpeg, "image/jpeg", concurrency=8,
                          seconds=10)
    thread.join(timeout=60)
    after, counts_after = rss_kib(server.pid), load.batch_counts(server.url)
    batches, images = (a - b for a, b in zip(counts_after, counts_before))
    assert set(result.statuses) == {200}, result.statuses
    assert images == result.statuses[200] and images / batches > 1.5, (batches, images)
    assert result.statuses[200] >= 20, result.statuses
    assert bad_statuses and set(bad_statuses) == {400}, bad_statuses
    # Flat: after the warm-up run, 10 s more of the same load (bad requests mixed in) grows
    # the server by at most 32 MiB of allocator slack; a leak of even 10 kB a request shows.
    print(f"RSS {before / 1024:.0f} MiB before, {after / 1024:.0f} MiB after")
    assert after - before < 32 * 1024, (before, after)
    assert call(server.url + "/ping")[0] == 200
    print(f"8 clients, 10 s: {result.throughput:.1f} requests/s, p50 "
          f"{result.percentile_ms(50):.0f} ms, p99 {result.percentile_ms(99):.0f} ms, "
          f"{images / batches:.1f} images a batch; "
          f"{len(bad_statuses)} bad requests answered 400; RSS {before // 1024} -> "
          f"{after // 1024} MiB")


class _FakeModel:
    """Stands for a Detector: records batch sizes; an image b"bad" fails like a decode error,
    and every call fails with ``error`` when one is given (out of memory, a bug)."""

    def __init__(self, error: Exception | None = None):
        self.batch_sizes, self.error = [], error

    def __call__(self, images):
        self.batch_sizes.append(len(images))
        time.sleep(0.02)
        if self.error is not None:
            raise self.error
        if b"bad" in images:
            raise tf.errors.InvalidArgumentError(None, None, "Unknown image file format")
        n = len(images)
        return {"detection_boxes": np.zeros([n, 2, 4], np.float32),
                "detection_scores": np.array([[len(i), 0.0] for i in images], np.float32),
                "detection_classes": np.zeros([n, 2], np.float32),
                "num_detections": np.ones([n], np.float32)}


def _run_batcher(model, max_batch_size, requests):
    async def run():
        batcher = serving.Batcher(model, max_batch_size, timeout_s=0.05)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.detect(r) for r in requests),
                                        return_exceptions=True)
        finally:
            await batcher.stop()
    return asyncio.run(run())


def test_batcher_batches_concurrent_requests_up_to_the_maximum():
    model = _FakeModel()
    requests = [[(f"r{n}", b"x" * (n + 1))] for n in range(9)] + [[("a", b"ab"), ("b", b"abc")]]
    results = _run_batcher(model, 4, requests)
    assert model.batch_sizes == [4, 4, 3]
    for n, result in enumerate(results[:9]):  # each request gets its own image's result
        assert result[0]["detection_scores"][0] == n + 1
    assert [r["detection_scores"][0] for r in results[9]] == [2, 3]


def test_batcher_unbatched_and_one_bad_image_fails_alone():
    model = _FakeModel()
    assert len(_run_batcher(model, 1, [[("a", b"a")], [("b", b"b")]])) == 2
    assert model.batch_sizes == [1, 1]
    model = _FakeModel()
    results = _run_batcher(model, 8, [[("good", b"good")], [("bad one", b"bad")], [("ok", b"ok")]])
    assert model.batch_sizes == [3, 1, 1, 1]  # the failed batch, then each image alone
    assert results[0][0]["detection_scores"][0] == 4 and results[2][0] is not None
    assert isinstance(results[1], serving_formats.RequestError)
    assert results[1].status == 400 and results[1].message.startswith("bad one: the model cannot")


@pytest.mark.parametrize("error", [
    tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"),
    RuntimeError("a bug")])
def test_batcher_a_general_failure_fails_the_batch_after_one_call(error):
    """Only what one image can cause is worth running each image alone: a failure of the model
    itself costs one call, not one more a image, and every request of the batch gets a 500."""
    model = _FakeModel(error)
    results = _run_batcher(model, 8, [[("a", b"a")], [("b", b"b"), ("c", b"c")], [("d", b"d")]])
    assert model.batch_sizes == [4]
    for result, first in zip(results, ["a", "b", "d"]):
        assert isinstance(result, serving_formats.RequestError) and result.status == 500
        assert result.message.startswith(f"{first}: the model failed ({type(error).__name__})")


@pytest.mark.slow
def test_accept_annotation_answers_in_pixels(served):
    """Accept: application/json;annotation=1, the algorithm's other response format: each row of
    the prediction format in integer pixels of the request's own image."""
    url = served["main"].url + "/invocations"
    png = served["images"]["png"]
    width, height = Image.open(io.BytesIO(png)).size

    def expected(prediction):
        rows = []
        for cls, score, xmin, ymin, xmax, ymax in prediction["prediction"]:
            left, top = round(xmin * width), round(ymin * height)
            rows.append([int(cls), score, left, top, round(xmax * width) - left,
                         round(ymax * height) - top])
        return rows

    def rows(answer):
        assert answer["image_size"] == [{"width": width, "height": height, "depth": 3}]
        return [[a["class_id"], a["score"], a["left"], a["top"], a["width"], a["height"]]
                for a in answer["annotations"]]

    for accept in ("application/json;annotation=1", "application/json; annotation=1",
                   "text/html, application/json;annotation=1"):
        status, headers, body = call(url, "POST", png, "image/png", accept)
        assert status == 200 and headers["Content-Type"].startswith("application/json"), body
        got, want = rows(json.loads(body)), expected(served["predict"][1])
        assert len(got) == len(want) > 0
        for a, b in zip(got, want):
            assert a[0] == b[0] and a[2:] == b[2:] and abs(a[1] - b[1]) < 1e-4, (a, b)
    line = (json.dumps({"b64": _b64(png)}) + "\n").encode()
    status, _, body = call(url, "POST", line, "application/jsonlines",
                           "application/jsonlines;annotation=1")
    assert status == 200 and len(rows(json.loads(body))) == len(expected(served["predict"][1]))
    status, _, body = call(url, "POST", png, "image/png", "application/json")  # the default
    assert_same_prediction(json.loads(body), served["predict"][1])
    status, _, body = call(url, "POST", png, "image/png", "text/csv")
    assert status == 406 and "application/json" in json.loads(body)["error"]


def test_annotation_response_golden():
    """Pixels of a 200 x 100 grayscale image: [0.1, 0.2, 0.3, 0.4] yxyx -> left 40, top 10,
    width 40, height 20; depth 1."""
    one = {"detection_boxes": np.array([[0.1, 0.2, 0.3, 0.4], [0, 0, 0, 0]], np.float32),
           "detection_scores": np.array([0.75, 0.0], np.float32),
           "detection_classes": np.array([2, 0], np.float32),
           "num_detections": np.float32(1)}
    image = serving_formats.ImageInfo("PNG", 200, 100, "L")
    assert serving_formats.to_annotations(one, image) == {
        "image_size": [{"width": 200, "height": 100, "depth": 1}],
        "annotations": [{"class_id": 2, "score": 0.75, "left": 40, "top": 10, "width": 40,
                         "height": 20}]}
    assert not serving_formats.wants_annotations("")
    assert not serving_formats.wants_annotations("*/*")
    assert serving_formats.wants_annotations("application/json;annotation=1")
    with pytest.raises(serving_formats.RequestError, match="Accept 'image/png'"):
        serving_formats.wants_annotations("image/png")


def test_sagemaker_response_golden():
    """Rows are [class, score, xmin, ymin, xmax, ymax]: the yxyx boxes reordered, padding and
    scores under min_score left out (tfssd-predict prints the same function's output)."""
    one = {"detection_boxes": np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.75, 1.0],
                                        [0, 0, 0, 0]], np.float32),
           "detection_scores": np.array([0.75, 0.25, 0.0], np.float32),
           "detection_classes": np.array([2, 0, 0], np.float32),
           "num_detections": np.float32(2)}
    f = lambda x: float(np.float32(x))
    assert serving_formats.to_sagemaker(one) == {"prediction": [
        [2.0, 0.75, f(0.2), f(0.1), f(0.4), f(0.3)], [0.0, 0.25, 0.5, 0.5, 1.0, 0.75]]}
    assert serving_formats.to_sagemaker(one, min_score=0.5) == {"prediction": [
        [2.0, 0.75, f(0.2), f(0.1), f(0.4), f(0.3)]]}


def test_batch_transforms_payload_size_sets_the_body_limit_unless_the_flag_does():
    environ = {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "6"}  # the Ground Truth notebook's MaxPayloadInMB
    assert serve.max_body_bytes(16 * 2**20, False, environ) == 6 * 2**20
    assert serve.max_body_bytes(1000, True, environ) == 1000
    assert serve.max_body_bytes(16 * 2**20, False, {}) == 16 * 2**20
    with pytest.raises(app.UsageError, match="SAGEMAKER_MAX_PAYLOAD_IN_MB='x'"):
        serve.max_body_bytes(16 * 2**20, False, {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "x"})


def test_model_and_port_from_the_sagemaker_container(tmp_path):
    environ = {"SAGEMAKER_BIND_TO_PORT": "9090"}
    assert serve.model_and_port(None, None, environ, str(tmp_path)) == (str(tmp_path), 9090)
    assert serve.model_and_port("m", 81, environ, str(tmp_path)) == ("m", 81)
    assert serve.model_and_port("m", None, {}, str(tmp_path)) == ("m", 8080)
    with pytest.raises(app.UsageError, match="--model=EXPORT_DIR"):
        serve.model_and_port(None, None, {}, str(tmp_path / "absent"))
    with pytest.raises(app.UsageError, match="SAGEMAKER_BIND_TO_PORT='http'"):
        serve.model_and_port("m", None, {"SAGEMAKER_BIND_TO_PORT": "http"}, str(tmp_path))


def _parse(content_type: str, body: bytes, max_images: int = 4):
    """parse_invocation's images, or the RequestError's (status, message)."""
    try:
        return serving_formats.parse_invocation(content_type, body, 10**6, max_images)[1]
    except serving_formats.RequestError as e:
        return e.status, e.message


def test_json_bodies_are_counted_as_walked_never_loaded():
    """413 at the first image past the limit, before the rest is parsed: garbage after it, or
    a body cut short there, still gets 413, not 400; JSON Lines are counted before any line is
    parsed. What json.loads would build for other members is checked but not built, bounded."""
    png = _flat_png(20, 10)
    instance = json.dumps({"b64": _b64(png)})
    five = "[" + ", ".join([instance] * 5)
    for body in (five + ", garbage", five):
        status, message = _parse("application/json", ('{"instances": ' + body).encode())
        assert status == 413 and "over 4 images" in message and "--max_images_per_request" in (
            message)
    lines = (instance + "\n") * 5 + "{not json\n"
    assert _parse("application/jsonlines", lines.encode())[0] == 413
    assert _parse("application/jsonlines", ((instance + "\n") * 2 + "{oops\n").encode()) == (
        400, "line 3: malformed JSON (expected a string at byte "
             f"{2 * len(instance) + 3})")
    many = '{"parameters": [' + ", ".join(["{}"] * 10_001) + '], "instances": []}'
    status, message = _parse("application/json", many.encode())
    assert status == 400 and "more than 10000 JSON values" in message
    deep = '{"x": ' + "[" * 40 + "]" * 40 + ', "instances": [' + instance + "]}"
    assert _parse("application/json", deep.encode()) == (
        400, "request body: JSON nested too deeply (over 32 levels)")


def test_json_bodies_walked_as_json_loads_reads_them():
    """Escapes in base64 (\\/, MIME line breaks \\n, \\u0041), members the server does not read
    (Vertex AI's "parameters"), TF Serving's named form, duplicate keys (the last counts),
    a bytearray body: each gives the image json.loads would."""
    png = _flat_png(20, 10)
    text = _b64(png)
    escaped = json.dumps({"instances": [{"b64": text[:8] + "\n" + text[8:]}]}).replace(
        "/", "\\/").replace("A", "\\u0041")
    assert "\\u0041" in escaped and "\\n" in escaped
    for body in (escaped,
                 json.dumps({"parameters": {"k": [1, 2.5e3, None, True, "s"]},
                             "instances": [{"b64": text}]}),
                 json.dumps({"instances": [{"images": {"b64": text}}]}),
                 '{"instances": [{"b64": "AA=="}], "instances": [{"b64": "' + text + '"}]}'):
        assert _parse("application/json", body.encode()) == [("instances[0]", png)], body[:80]
        assert _parse("application/json", bytearray(body.encode())) == [("instances[0]", png)]
    assert _parse("application/json", b'{"instances": [{"b64": "' + text.encode()
                  + b'", "b64": 1}]}')[0] == 400  # the last "b64" is not a string
    lines = ("\n" + json.dumps({"b64": text}) + "\r\n\n  " + json.dumps({"b64": text})).encode()
    assert _parse("application/jsonlines", lines) == [("line 2", png), ("line 4", png)]
    for bad in (b'{"instances": [{"b64": "AA=="}]} trailing', b'{"instances": [{"b64": "AA=',
                b'{"instances": [{"b64": "AA=="},]}'):
        status, message = _parse("application/json", bad)
        assert status == 400 and message.startswith("request body: malformed JSON"), message
