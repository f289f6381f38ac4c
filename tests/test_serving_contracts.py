"""`slimops serve` under each hosting platform's container contract (SageMaker, Vertex AI, Azure ML, KServe).

Each test starts a real `slimops serve` process on a free loopback port with that platform's environment (as the
platform starts the container: no model arguments where the platform says where the model is), hits the
platform's own health and predict routes over HTTP, and checks that the predictions are the ones the Open
Inference Protocol route `/v2/models/model/infer` of the same process gives for the same inputs: a text model
(all-MiniLM-L6-v2 exported by slimops) and a tensor classifier (the digits CNN). The image itself is run with
podman where podman is installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, cli_env, link_tree

httpx = pytest.importorskip("httpx", reason="httpx (extra slimops[serve]) is not installed")
pytest.importorskip("uvicorn", reason="uvicorn (extra slimops[serve]) is not installed")
pytest.importorskip("starlette", reason="starlette (extra slimops[serve]) is not installed")

from test_container import image, image_build, podman  # noqa: E402,F401  (fixtures: the image under test)

SENTENCES = ["A man is playing a guitar.", "Stocks fell sharply on Monday.", "A child rides a bike in the park."]
VERTEX_ID = "/v1/endpoints/4321/deployedModels/8765"  # Vertex AI's own form of the routes it sets
PLATFORM_PREFIXES = ("AIP_", "AZUREML_", "SAGEMAKER_", "SLIMOPS_SERVE_")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**platform_env) -> dict:
    """The CLI's environment without any platform's variables from the machine running the tests, plus these."""
    env = {k: v for k, v in cli_env().items() if not k.startswith(PLATFORM_PREFIXES)}
    return {**env, **platform_env}


@contextlib.contextmanager
def serving(args: list, env: dict, port: int, health: str, timeout: float = 180):
    """``python -m slimops serve ARGS`` with ``env`` until ``health`` answers 200; yields an HTTP client."""
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"slimops-contract-{port}.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "slimops", "serve", *map(str, args)], env=env, stdout=sink,
                                stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if client.get(health).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready after {timeout} s:\n{log.read_text()}")
            time.sleep(0.2)
        client.log = log
        yield client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.unlink(missing_ok=True)


def platform_server(platform: str, model_dir: Path, tmp_path: Path, extra_args: tuple = ()):
    """The server as ``platform`` starts it; returns (context manager, health routes, predict route)."""
    port = free_port()
    loopback = ["--host", "127.0.0.1"]  # a platform container listens on 0.0.0.0; the tests stay on loopback
    if platform == "sagemaker":
        # SageMaker starts `<image> serve`; the model is /opt/ml/model, which a test cannot write: --champion.
        env = clean_env(SLIMOPS_SERVE_PLATFORM="sagemaker", SAGEMAKER_BIND_TO_PORT=str(port))
        args, health, predict = [*loopback, "--champion", model_dir], ["/ping"], "/invocations"
    elif platform == "vertex":
        # No --platform and no model argument: the AIP_* variables alone say Vertex AI, its port and routes.
        env = clean_env(AIP_HTTP_PORT=str(port), AIP_HEALTH_ROUTE=VERTEX_ID, AIP_PREDICT_ROUTE=VERTEX_ID + ":predict",
                        AIP_STORAGE_URI=str(model_dir), AIP_MODE="PREDICTION")
        args, health, predict = loopback, [VERTEX_ID], VERTEX_ID + ":predict"
    elif platform == "azureml":
        # Azure ML mounts a registered folder as $AZUREML_MODEL_DIR/<folder name>.
        mounted = tmp_path / "azureml-models" / "digits" / "1"
        link_tree(model_dir, mounted / "validated")
        env = clean_env(AZUREML_MODEL_DIR=str(mounted))
        args, health, predict = [*loopback, "--port", port], ["/"], "/score"
    else:
        env = clean_env(SLIMOPS_SERVE_PLATFORM="kserve")
        args = [*loopback, "--port", port, "--champion", model_dir]
        health, predict = ["/v2/health/live", "/v2/health/ready"], "/v2/models/model/infer"
    return serving([*args, *extra_args], env, port, health[0]), health, predict


def oip_outputs(client, body: dict) -> list[dict]:
    response = client.post("/v2/models/model/infer", json=body)
    assert response.status_code == 200, response.text
    return response.json()["outputs"]


def rows_of(outputs: list[dict]) -> list:
    """The OIP answer cut per instance, the way a platform's predictions must read."""
    [output] = outputs
    return np.asarray(output["data"]).reshape(output["shape"]).tolist()


def digits_rows(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 1, 8, 8), dtype=np.float32)


def digits_oip(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}


PLATFORMS = ["sagemaker", "vertex", "azureml", "kserve"]


# ----------------------------------------------------------------------------- same predictions on every platform


@pytest.mark.parametrize("platform", PLATFORMS)
def test_a_tensor_classifier_answers_the_platform_routes_like_oip(platform, digits_onnx, tmp_path):
    from slimops.handlers import load

    x = digits_rows(5)
    expected = load(digits_onnx).predict(x)
    context, health, predict = platform_server(platform, digits_onnx, tmp_path)
    with context as client:
        for route in health:
            assert client.get(route).status_code == 200
        oip = oip_outputs(client, digits_oip(x))
        np.testing.assert_allclose(np.array(rows_of(oip)), expected, rtol=1e-5, atol=1e-5)
        if platform == "kserve":  # KServe's predict route is OIP's own
            return
        # {"instances": [...]}: one row of the input per instance, one row of logits per prediction.
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        answer = client.post(predict, content=json.dumps({"instances": x.tolist()}), headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == {"predictions": rows_of(oip)}
        # The same route takes an OIP request too, and answers it as /infer does.
        same = client.post(predict, json=digits_oip(x))
        assert same.status_code == 200, same.text
        assert same.json()["outputs"] == oip
        # An instance naming the input is the same instance.
        named = client.post(predict, json={"instances": [{"input": row} for row in x.tolist()]})
        assert named.json() == {"predictions": rows_of(oip)}


@pytest.mark.parametrize("platform", ["sagemaker", "vertex", "azureml"])  # KServe's route is OIP's: test_serve.py
def test_a_text_model_answers_the_platform_routes_like_oip(platform, minilm_onnx, tmp_path):
    context, health, predict = platform_server(platform, minilm_onnx, tmp_path)
    with context as client:
        for route in health:
            assert client.get(route).status_code == 200
        oip = oip_outputs(client, {"inputs": [{"name": "text", "shape": [len(SENTENCES)], "datatype": "BYTES",
                                               "data": SENTENCES}]})
        assert oip[0]["name"] == "embedding" and oip[0]["shape"] == [3, 384]
        embeddings = np.array(rows_of(oip))
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)  # normalised, as validated
        answer = client.post(predict, json={"instances": SENTENCES})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"predictions": rows_of(oip)}
        named = client.post(predict, json={"instances": [{"text": s} for s in SENTENCES], "parameters": {}})
        assert named.json() == {"predictions": rows_of(oip)}


# ----------------------------------------------------------------------------- the contract's edges


def test_sagemaker_invocations_refuse_bodies_and_media_types_with_one_json_line(digits_onnx, tmp_path):
    context, _, predict = platform_server("sagemaker", digits_onnx, tmp_path, ("--max-batch", 4))
    with context as client:
        def refused(status: int, response) -> str:
            assert response.status_code == status, response.text
            assert list(response.json()) == ["error"] and "\n" not in response.json()["error"]
            return response.json()["error"]

        row = digits_rows(1)[0].tolist()
        assert "text/csv" in refused(415, client.post(predict, content=b"1,2,3", headers={"Content-Type": "text/csv"}))
        assert "excludes JSON" in refused(406, client.post(predict, json={"instances": [row]},
                                                           headers={"Accept": "text/csv"}))
        assert "not valid JSON" in refused(400, client.post(predict, content=b"{nope",
                                                            headers={"Content-Type": "application/json"}))
        assert "non-empty list" in refused(400, client.post(predict, json={"instances": []}))
        assert "unknown field" in refused(400, client.post(predict, json={"instances": [row], "extra": 1}))
        assert "shape" in refused(400, client.post(predict, json={"instances": [[1.0, 2.0]]}))  # not a 1x8x8 row
        assert "mix" in refused(400, client.post(predict, json={"instances": [row, {"input": row}]}))
        assert "unknown input" in refused(400, client.post(predict, json={"instances": [{"pixels": row}]}))
        assert "limit of 4" in refused(413, client.post(predict, json={"instances": [row] * 5}))
        assert "the request body must be" in refused(400, client.post(predict, json=[row]))
        # No Content-Type at all (a raw InvokeEndpoint body) is read as JSON; the server went on serving.
        plain = client.post(predict, content=json.dumps({"instances": [row]}).encode(), headers={"Content-Type": ""})
        assert plain.status_code == 200, plain.text
        assert refused(405, client.get(predict))


def test_the_sagemaker_artifact_serves_from_its_model_directory(digits_onnx, tmp_path):
    """model.tar.gz as the deploy step uploads it, unpacked as SageMaker unpacks it into /opt/ml/model, served
    with nothing but the platform variable and the directory."""
    from slimops.deploy import write_model_tarball
    from slimops.handlers import load

    tarball = write_model_tarball(digits_onnx, tmp_path / "model.tar.gz")
    opt_ml_model = tmp_path / "opt" / "ml" / "model"
    with tarfile.open(tarball) as tar:
        tar.extractall(opt_ml_model, filter="data")
    assert sorted(p.name for p in opt_ml_model.iterdir()) == sorted(p.name for p in digits_onnx.iterdir())
    x = digits_rows(2, seed=3)
    context, _, predict = platform_server("sagemaker", opt_ml_model, tmp_path)
    with context as client:
        answer = client.post(predict, json={"instances": x.tolist()})
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(np.array(answer.json()["predictions"]), load(digits_onnx).predict(x),
                                   rtol=1e-5, atol=1e-5)


def test_each_deploy_target_declares_what_the_server_answers(digits_onnx, tmp_path):
    """The container settings the deploy step registers (image arguments, environment, port, routes), read back
    from the request objects the step sends, start a server that answers exactly those routes."""
    pytest.importorskip("azure.ai.ml", reason="azure-ai-ml (extra slimops[azure]) is not installed")
    pytest.importorskip("google.cloud.aiplatform_v1", reason="google-cloud-aiplatform (extra slimops[gcp]) is not "
                                                             "installed")
    from slimops.deploy import SERVE_ARGS, azureml, sagemaker, vertex
    from slimops.serving.platforms import resolve

    x = digits_rows(2, seed=5)
    image = "registry.example/slimops:0.1.0"
    sm = sagemaker.container_definition(image, "s3://bucket/model.tar.gz")
    spec = vertex.container_spec(vertex.VertexTarget.model_validate(
        {"type": "vertex", "project": "my-project", "bucket": "b", "image_uri": image}))
    az_target = azureml.AzureMLTarget.model_validate(
        {"type": "azureml", "subscription_id": "s", "resource_group": "g", "workspace": "w", "location": "westeurope",
         "image_uri": image})
    az_routes = azureml.environment_entity(az_target)._to_rest_object().as_dict()["properties"]["inferenceConfig"]
    az_env = azureml.deployment_entity(az_target, "ep", "d-1", "azureml:m:1", {}).environment_variables
    assert SERVE_ARGS == ("serve",) and list(spec.args) == ["serve"]  # SageMaker passes `serve` by itself
    assert sm["Image"] == spec.image_uri == az_target.image_uri == image

    port = free_port()
    declared = {
        # SageMaker: port 8080 and /ping, /invocations are SageMaker's own (CreateModel has no field for them).
        "sagemaker": (sm["Environment"], {"SAGEMAKER_BIND_TO_PORT": str(port)}, 8080, "/ping", "/invocations"),
        # Vertex AI passes the container spec's port and routes to the container as AIP_* variables.
        "vertex": ({e.name: e.value for e in spec.env},
                   {"AIP_HTTP_PORT": str(port), "AIP_HEALTH_ROUTE": spec.health_route,
                    "AIP_PREDICT_ROUTE": spec.predict_route},
                   spec.ports[0].container_port, spec.health_route, spec.predict_route),
        # Azure ML probes and scores on the environment's inference_config routes.
        "azureml": (az_env, {}, az_routes["scoringRoute"]["port"], az_routes["livenessRoute"]["path"],
                    az_routes["scoringRoute"]["path"]),
    }
    assert az_routes["readinessRoute"] == az_routes["livenessRoute"]
    for platform, (registered, platform_env, declared_port, health, predict) in declared.items():
        env = clean_env(**registered)
        assert env["SLIMOPS_SERVE_PLATFORM"] == platform
        assert resolve(None, registered).port == declared_port  # the server's own port is the one declared
        with serving(["--host", "127.0.0.1", "--port", port, "--champion", digits_onnx], {**env, **platform_env},
                     port, health) as client:
            answer = client.post(predict, json={"instances": x.tolist()})
            assert answer.status_code == 200, f"{platform}: {answer.text}"
            assert len(answer.json()["predictions"]) == 2


def test_the_readme_vertex_block_runs_as_copied(minilm_onnx, tmp_path):
    """The README's block, run by bash in a directory holding `model/`, with only $PORT set (a free one)."""
    import signal

    from slimops.serving.model import ServedModel

    readme = (REPO / "README.md").read_text()
    start = readme.index("```bash\n", readme.index("Vertex AI's contract, on loopback")) + len("```bash\n")
    block = readme[start:readme.index("```", start)]
    assert "slimops serve" in block and "/predict" in block
    link_tree(minilm_onnx, tmp_path / "model")
    env = clean_env(PORT=str(free_port()))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # the venv's `slimops`, as an installed user has it
    shell = subprocess.Popen(["bash", "-ec", block], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = shell.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the block's server, if the block stopped before `kill`
            os.killpg(shell.pid, signal.SIGTERM)
    assert shell.returncode == 0, err[-3000:]
    health = '{"ready":true}'
    assert out.startswith(health), out[:300]
    [prediction] = json.loads(out[len(health):])["predictions"]
    model = ServedModel("model", "champion", minilm_onnx)
    expected = model.run(model.feeds({"text": np.array(["A man is playing a guitar."], dtype=object)}),
                         ["embedding"])["embedding"][0]
    np.testing.assert_allclose(prediction, expected, rtol=1e-5, atol=1e-5)


def run_serve(env: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slimops", "serve", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("case", ["vertex-gcs", "vertex-port", "vertex-route", "unknown-platform", "sagemaker-no-model",
                                  "azureml-empty"])
def test_a_platform_misconfiguration_exits_2_with_one_line(case, tmp_path):
    empty = tmp_path / "mounted"
    empty.mkdir()
    env, args, says = {
        "vertex-gcs": ({"AIP_HTTP_PORT": "8080", "AIP_STORAGE_URI": "gs:///model"}, [], "gs://BUCKET/PREFIX"),
        "vertex-port": ({"AIP_HTTP_PORT": "eighty", "AIP_STORAGE_URI": str(empty)}, [], "not a port number"),
        "vertex-route": ({"AIP_PREDICT_ROUTE": "predict", "AIP_STORAGE_URI": str(empty)}, [], "starting with '/'"),
        "unknown-platform": ({"SLIMOPS_SERVE_PLATFORM": "heroku"}, [], "heroku"),
        # --platform sagemaker with no model: /opt/ml/model is not on this machine (nor written by tests).
        "sagemaker-no-model": ({}, ["--platform", "sagemaker"], "/opt/ml/model"),
        "azureml-empty": ({"AZUREML_MODEL_DIR": str(empty)}, [], "holds no model directory"),
    }[case]
    if case == "sagemaker-no-model" and Path("/opt/ml/model").exists():
        pytest.skip(reason="/opt/ml/model exists on this machine: the missing-model case cannot be shown")
    done = run_serve(clean_env(**env), *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slimops: error:") and says in lines[0], done.stderr


# ----------------------------------------------------------------------------- the image, where podman runs


@pytest.mark.slow
def test_the_image_serves_the_sagemaker_contract(image, digits_onnx, tmp_path):
    """`podman run IMAGE serve` with the model mounted at /opt/ml/model, as SageMaker runs it: /ping and
    /invocations on port 8080 answer what the process answers."""
    from slimops.handlers import load

    shutil.copytree(digits_onnx, tmp_path / "model")
    for path in [tmp_path / "model", *(tmp_path / "model").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by the image's user
    port = free_port()
    started = podman("run", "-d", "--rm", "--ulimit=nofile=1024:1024", "--ulimit=nproc=1024:1024",
                     f"--publish=127.0.0.1:{port}:8080", f"--volume={tmp_path / 'model'}:/opt/ml/model:ro",
                     image, "serve")
    assert started.returncode == 0, started.stderr
    container = started.stdout.strip()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 120
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/ping").status_code == 200:
                        break
                assert time.monotonic() < deadline, podman("logs", container).stderr
                time.sleep(0.5)
            x = digits_rows(3)
            answer = client.post("/invocations", json={"instances": x.tolist()})
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose(np.array(answer.json()["predictions"]), load(digits_onnx).predict(x),
                                       rtol=1e-5, atol=1e-5)
    finally:
        podman("stop", "--time=5", container)
