"""`slimops serve`: a real uvicorn server on a loopback port (a subprocess, as a user starts it), spoken to
over HTTP with the Open Inference Protocol v2; canary rollbacks from a real MLflow SQLite registry."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_env, link_tree, run_cli

httpx = pytest.importorskip("httpx", reason="httpx (extra slimops[serve]) is not installed")
pytest.importorskip("uvicorn", reason="uvicorn (extra slimops[serve]) is not installed")
pytest.importorskip("starlette", reason="starlette (extra slimops[serve]) is not installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(*args, timeout: float = 180):
    """``python -m slimops serve ARGS --port P`` until ready; yields (client, process); stops it after."""
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"slimops-serve-{port}.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "slimops", "serve", *map(str, args), "--port", str(port)],
                                env=cli_env(), stdout=sink, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if client.get("/v2/health/ready").status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready after {timeout} s:\n{log.read_text()}")
            time.sleep(0.2)
        proc.log = log
        yield client, proc
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.unlink(missing_ok=True)  # its text is already in any assertion message


def digits_request(batch: int = 1, seed: int = 0) -> tuple[dict, np.ndarray]:
    x = np.random.default_rng(seed).random((batch, 1, 8, 8), dtype=np.float32)
    return {"id": f"req-{seed}", "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                            "data": x.reshape(-1).tolist()}]}, x


def infer(client, body, name="model", version=None):
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    return client.post(path, json=body) if isinstance(body, dict) else client.post(
        path, content=body, headers={"content-type": "application/json"})


def broken_model(src: Path, dst: Path) -> Path:
    """The digits ONNX with a Reshape of its logits to [7, -1] appended: it loads (a valid graph), then fails at
    run time for every batch whose 10*B logits do not divide by 7: a model whose inference errors."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src / "model.onnx"))
    graph = model.graph
    old = graph.output[0].name
    graph.initializer.append(numpy_helper.from_array(np.array([7, -1], dtype=np.int64), "broken_shape"))
    for node in graph.node:
        node.output[:] = [f"{o}_raw" if o == old else o for o in node.output]
    graph.node.append(helper.make_node("Reshape", [f"{old}_raw", "broken_shape"], [old]))
    dims = graph.output[0].type.tensor_type.shape.dim  # still [rows, columns]: only how many rows changes
    dims[0].dim_param, dims[1].dim_param = "rows", "columns"
    dst.mkdir()
    onnx.save(model, str(dst / "model.onnx"))
    return dst


# ----------------------------------------------------------------------------- serving a model


def test_serves_a_model_over_oip_v2(digits_onnx):
    from slimops.handlers import load

    body, x = digits_request(batch=3)
    expected = load(digits_onnx).predict(x)
    with server("--champion", digits_onnx, "--name", "digits") as (client, _):
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2").json()["name"] == "slimops"
        meta = client.get("/v2/models/digits").json()
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        assert meta["outputs"][0]["datatype"] == "FP32" and meta["outputs"][0]["shape"][-1] == 10
        assert client.get("/v2/models/digits/ready").json()["ready"] is True

        response = infer(client, body, "digits")
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["model_name"] == "digits" and answer["model_version"] == "champion" and answer["id"] == "req-0"
        [output] = answer["outputs"]
        assert output["shape"] == [3, 10] and output["datatype"] == "FP32"
        np.testing.assert_allclose(np.array(output["data"]).reshape(3, 10), expected, rtol=1e-5, atol=1e-5)
        # nested (non-flat) data is accepted too
        nested = {"inputs": [{**body["inputs"][0], "data": x.tolist()}]}
        assert infer(client, nested, "digits").json()["outputs"][0]["data"] == output["data"]
        assert infer(client, body, "digits", version="champion").status_code == 200


def test_bad_requests_get_4xx_and_the_server_keeps_serving(digits_onnx):
    good, _ = digits_request()
    spec = good["inputs"][0]
    bad = {
        "wrong shape": ({"inputs": [{**spec, "shape": [1, 8, 8]}]}, 400, "dimensions"),
        "wrong fixed dim": ({"inputs": [{**spec, "shape": [1, 2, 8, 4]}]}, 400, "dimension 1 must be 1"),
        "data does not fill shape": ({"inputs": [{**spec, "shape": [2, 1, 8, 8]}]}, 400, "do not fill"),
        "wrong dtype": ({"inputs": [{**spec, "datatype": "INT64", "data": [1] * 64}]}, 400, "does not match"),
        "unknown dtype": ({"inputs": [{**spec, "datatype": "FLOAT"}]}, 400, "not an Open Inference Protocol"),
        "strings as FP32": ({"inputs": [{**spec, "data": ["x"] * 64}]}, 400, "only numbers"),
        "ragged data": ({"inputs": [{**spec, "data": [[1.0, 2.0], [3.0]]}]}, 400, "regular array"),
        "unknown input": ({"inputs": [{**spec, "name": "pixels"}]}, 400, "unknown input"),
        "no inputs": ({"inputs": []}, 400, "non-empty"),
        "not json": (b"{inputs: oops", 400, "not valid JSON"),
        "batch over limit": ({"inputs": [{**spec, "shape": [65, 1, 8, 8], "data": [0.0] * 65 * 64}]}, 413, "limit"),
        "oversized body": (b"[" + b"0.0," * 600_000 + b"0.0]", 413, "limit"),
        "non-finite": ({"inputs": [{**spec, "data": [1e39] * 64}]}, 400, "not finite"),
        "unknown output": ({**good, "outputs": [{"name": "probabilities"}]}, 400, "unknown output"),
    }
    with server("--champion", digits_onnx, "--max-body-bytes", 1_000_000) as (client, proc):
        for what, (body, status, words) in bad.items():
            response = infer(client, body)
            assert response.status_code == status, f"{what}: {response.status_code} {response.text[:300]}"
            assert words in response.json()["error"], f"{what}: {response.json()}"
            assert infer(client, good).status_code == 200, f"server stopped serving after: {what}"
        assert client.post("/v2/models/other/infer", json=good).status_code == 404
        assert client.get("/v2/models/model/versions/7").status_code == 404
        assert client.get("/v2/models/model/infer").status_code == 405
        assert proc.poll() is None


# ----------------------------------------------------------------------------- canary


def test_a_failing_canary_is_rolled_back_automatically(digits_onnx, tmp_path):
    challenger = broken_model(digits_onnx, tmp_path / "broken")
    audit = tmp_path / "audit.jsonl"
    with server("--champion", digits_onnx, "--challenger", challenger, "--canary-percent", 50,
                "--min-requests", 4, "--max-error-rate", 0.2, "--audit-log", audit) as (client, proc):
        assert client.get("/v2/models/model").json()["versions"] == ["champion", "challenger"]
        statuses, versions = [], []
        for i in range(30):
            response = infer(client, digits_request(seed=i)[0])
            statuses.append(response.status_code)
            versions.append(response.json().get("model_version"))
        # Every other request went to the broken challenger until its 4th failure, then none did.
        assert statuses[:8] == [200, 500] * 4, statuses
        assert statuses[8:] == [200] * 22, statuses
        assert set(versions[8:]) == {"champion"}
        canary = client.get("/v2/models/model/canary").json()
        assert canary["rolled_back"] is True and canary["percent"] == 0
        assert "error rate 100.0%" in canary["reason"]
        assert canary["failed"]["challenger"] == 4 and canary["failed"]["champion"] == 0
        assert proc.poll() is None
        deadline = time.monotonic() + 10
        while not audit.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
    [entry] = [json.loads(line) for line in audit.read_text().splitlines()]
    assert entry["action"] == "canary_rollback" and entry["from"] == str(challenger.absolute())
    assert entry["to"] == str(Path(digits_onnx).absolute()) and "error rate" in entry["why"] and entry["who"]


def _validated(src: Path, baseline: Path, out: Path) -> Path:
    from slimops.core import run_step

    run_step("validate", src, out, {"data": {"format": "digits", "split": "test", "limit": 60}, "rounds": 1,
                                    "latency_runs": 5, "throughput_samples": 32, "measure_memory": False,
                                    "gate": {"max_metric_drop": 50.0, "min_speedup": None}},
             inputs={"baseline": baseline}, threads=1)
    return out


def test_registry_canary_breaching_its_latency_slo_is_rolled_back(digits_trained, digits_onnx, tmp_path):
    """register v1 -> promote (champion); register v2 -> promote with strategy canary and a p95 SLO nothing
    meets; `slimops serve --registry` canaries v2, rolls it back on its own, and the registry records it."""
    pytest.importorskip("mlflow", reason="mlflow (extra slimops[registry]) is not installed")
    from slimops.core import run_step
    from slimops.registry import CHALLENGER, CHAMPION, TAG_CANARY_STATUS, Registry

    registry_dir = tmp_path / "registry"
    fp32 = _validated(digits_onnx, digits_trained, tmp_path / "v1-validated")
    run_step("quantize", digits_onnx, tmp_path / "int8", {"mode": "dynamic"})
    int8 = _validated(tmp_path / "int8", digits_trained, tmp_path / "v2-validated")
    location = {"registry_dir": str(registry_dir)}
    for tag, model, promote in (("v1", fp32, {}),
                                ("v2", int8, {"strategy": "canary", "canary": {"percent": 50, "min_requests": 3,
                                                                               "max_p95_ms": 0.001}})):
        run_step("register", model, tmp_path / f"{tag}-registered", {"name": "digits", **location})
        run_step("promote", tmp_path / f"{tag}-registered", tmp_path / f"{tag}-promoted", {**location, **promote})
    registry = Registry.open(registry_dir)
    assert (registry.alias("digits", CHAMPION), registry.alias("digits", CHALLENGER)) == ("1", "2")

    with server("--registry", registry_dir) as (client, proc):
        versions = [infer(client, digits_request(seed=i)[0], "digits").json()["model_version"] for i in range(20)]
        assert versions[:6] == ["1", "2"] * 3, versions
        assert set(versions[6:]) == {"1"}, versions
        canary = client.get("/v2/models/digits/canary").json()
        assert canary["rolled_back"] and "p95 latency" in canary["reason"]
        deadline = time.monotonic() + 60  # the registry is updated off the request path; the audit line is last
        while len(registry.audit_entries()) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert proc.poll() is None
    assert registry.alias("digits", CHAMPION) == "1", "a failed canary must never move the champion"
    assert registry.alias("digits", CHALLENGER) is None
    assert registry.version_tags("digits", "2")[TAG_CANARY_STATUS].startswith("rolled_back")
    actions = [(e["action"], e["from"], e["to"]) for e in registry.audit_entries()]
    assert actions == [("promote", None, "1"), ("canary_start", "1", "2"), ("canary_rollback", "2", "1")]

    # A restarted server does not send the rejected version traffic again.
    with server("--registry", registry_dir) as (client, _):
        assert client.get("/v2/models/digits").json()["versions"] == ["1"]


def test_serve_bad_arguments_are_one_line_errors(digits_onnx, tmp_path):
    cases = [
        ((), "either --registry"),
        (("--champion", digits_onnx, "--challenger", digits_onnx, "--canary-percent", 80), "canary policy.percent"),
        (("--champion", tmp_path / "missing"), "not found"),
        (("--registry", tmp_path), "not a slimops registry"),
    ]
    for args, words in cases:
        result = run_cli("serve", *args, "--port", free_port(), timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("slimops: error:"), result.stderr
        assert words in lines[0], lines[0]


# ----------------------------------------------------------------------------- text (MiniLM)


@pytest.mark.slow
def test_serves_minilm_from_text_and_from_tokens(minilm_onnx, tmp_path):
    from slimops.handlers import load

    sentences = ["A man is playing a guitar.", "Compression should not change what the model means."]
    runnable = load(minilm_onnx)
    expected = runnable.predict(sentences)
    tokens = runnable.tokenize(sentences)
    with server("--champion", link_tree(minilm_onnx, tmp_path / "minilm"), "--name", "minilm") as (client, _):
        names = [i["name"] for i in client.get("/v2/models/minilm").json()["inputs"]]
        assert set(names) == {"input_ids", "attention_mask", "token_type_ids"}
        by_text = infer(client, {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                                             "data": sentences}]}, "minilm")
        assert by_text.status_code == 200, by_text.text
        [embedding] = by_text.json()["outputs"]
        assert embedding["name"] == "embedding" and embedding["shape"] == [2, 384]
        np.testing.assert_allclose(np.array(embedding["data"]).reshape(2, 384), expected, atol=1e-4)
        by_tokens = infer(client, {"inputs": [{"name": n, "shape": list(tokens[n].shape), "datatype": "INT64",
                                               "data": tokens[n].reshape(-1).tolist()} for n in names]}, "minilm")
        assert by_tokens.status_code == 200, by_tokens.text
        np.testing.assert_allclose(np.array(by_tokens.json()["outputs"][0]["data"]).reshape(2, 384), expected,
                                   atol=1e-4)
        out_of_vocab = {"inputs": [{"name": n, "shape": list(tokens[n].shape), "datatype": "INT64",
                                    "data": (tokens[n] + (10**6 if n == "input_ids" else 0)).reshape(-1).tolist()}
                                   for n in names]}
        response = infer(client, out_of_vocab, "minilm")
        assert response.status_code == 400 and "input_ids values" in response.json()["error"]
        assert infer(client, {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                          "data": ["still serving"]}]}, "minilm").status_code == 200
