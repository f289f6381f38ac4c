"""`slimops serve` under Vertex AI with a gs:// AIP_STORAGE_URI, against a real Cloud Storage emulator on loopback.

Vertex AI copies the uploaded model (artifact_uri) into a bucket and gives the container ``gs://bucket/prefix``;
the server downloads it at startup into a private temporary directory. The emulator (gcp-storage-emulator, extra
``test``) runs as its own process; STORAGE_EMULATOR_HOST points both the uploading test and the server's
google-cloud-storage client at it, as the client library documents.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

storage = pytest.importorskip("google.cloud.storage",
                              reason="google-cloud-storage (extra slimops[gcs]) is not installed")
pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator (extra slimops[test]) is not installed")

from test_serving_contracts import (  # noqa: E402
    VERTEX_ID, clean_env, digits_oip, digits_rows, free_port, oip_outputs, rows_of, run_serve, serving)

BUCKET = "vertex-models"


@pytest.fixture(scope="module")
def emulator():
    """A gcp-storage-emulator process on a free loopback port, in memory; yields its STORAGE_EMULATOR_HOST."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port",
                             str(port), "--in-memory", "--default-bucket", BUCKET, "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the storage emulator did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def bucket(emulator, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    return storage.Client(project="test").bucket(BUCKET)


def upload_tree(bucket, directory: Path, prefix: str) -> int:
    count = 0
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            bucket.blob(f"{prefix}/{path.relative_to(directory).as_posix()}").upload_from_filename(str(path))
            count += 1
    return count


def vertex_env(emulator: str, uri: str, port: int, tmpdir: Path, **extra) -> dict:
    tmpdir.mkdir(exist_ok=True)
    # TMPDIR: where the download goes, so the test can see it made and removed, and nothing beside it.
    return clean_env(AIP_HTTP_PORT=str(port), AIP_HEALTH_ROUTE=VERTEX_ID, AIP_PREDICT_ROUTE=VERTEX_ID + ":predict",
                     AIP_STORAGE_URI=uri, AIP_MODE="PREDICTION", STORAGE_EMULATOR_HOST=emulator, TMPDIR=str(tmpdir),
                     **extra)


def test_a_gs_model_location_is_downloaded_and_served_like_oip(emulator, bucket, digits_onnx, tmp_path):
    from slimops.handlers import load

    assert upload_tree(bucket, digits_onnx, "digits/v1") >= 2
    x = digits_rows(4, seed=3)
    expected = load(digits_onnx).predict(x)
    port, scratch = free_port(), tmp_path / "tmp"
    env = vertex_env(emulator, f"gs://{BUCKET}/digits/v1", port, scratch)
    with serving(["--host", "127.0.0.1"], env, port, VERTEX_ID) as client:
        [download] = list(scratch.glob("slimops-model-*"))
        assert download.stat().st_mode & 0o077 == 0  # private to the server's user
        assert sorted(p.name for p in download.iterdir()) == sorted(p.name for p in digits_onnx.iterdir())
        oip = oip_outputs(client, digits_oip(x))
        np.testing.assert_allclose(np.array(rows_of(oip)), expected, rtol=1e-5, atol=1e-5)
        answer = client.post(VERTEX_ID + ":predict", content=json.dumps({"instances": x.tolist()}),
                             headers={"Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"predictions": rows_of(oip)}
    assert list(scratch.glob("slimops-model-*")) == []  # the download goes when the server stops


# Names the emulator stores that a naive join would put elsewhere: "//etc/passwd" joins to /etc/passwd.
ESCAPES = {"escape-absolute": "//etc/passwd", "escape-dot": "/./manifest.json"}


@pytest.mark.parametrize("case", [*ESCAPES, "too-big", "empty", "not-a-model"])
def test_a_bad_gs_model_location_exits_2_with_one_line_and_writes_nothing(case, emulator, bucket, digits_onnx,
                                                                         tmp_path):
    scratch = tmp_path / "tmp"
    extra = {}
    if case in ESCAPES:
        prefix, says = case, "would be written outside the model directory"
        upload_tree(bucket, digits_onnx, prefix)  # a real model beside the hostile object
        bucket.blob(prefix + ESCAPES[case]).upload_from_string(b"not a model")
    elif case == "too-big":
        upload_tree(bucket, digits_onnx, "big")
        prefix, says, extra = "big", "over the 1000-byte limit", {"SLIMOPS_MAX_DOWNLOAD_BYTES": "1000"}
    elif case == "empty":
        prefix, says = "nothing-here", "holds no objects"
    else:
        bucket.blob("notes/readme.txt").upload_from_string(b"no model here")
        prefix, says = "notes", "holds no model directory"
    done = run_serve(vertex_env(emulator, f"gs://{BUCKET}/{prefix}", free_port(), scratch, **extra))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slimops: error:") and says in lines[0], done.stderr
    assert list(scratch.glob("slimops-model-*")) == []  # nothing half-downloaded left behind
    assert not (scratch / "etc").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]


@pytest.mark.parametrize("name", ["m/../evil", "m/..", "m/a/../../evil", "m/..\\evil", "m/a\\b", "m/c:/evil",
                                  "m/a\x00b"])
def test_object_names_the_emulator_refuses_to_store_are_refused_too(name):
    """The emulator will not store '..' or backslashes; Cloud Storage does. Checked on the name alone."""
    from slimops.errors import BadInput
    from slimops.serving.gcs import safe_relative

    with pytest.raises(BadInput, match="would be written outside the model directory"):
        safe_relative(name, "m/")
    assert safe_relative("m/sub/model.onnx", "m/") == "sub/model.onnx"


def test_without_google_cloud_storage_a_gs_location_names_the_extra(tmp_path):
    """An image built without the gcs extra: the start says which extra to add, instead of a traceback."""
    code = ("import sys; sys.modules['google.cloud.storage'] = None  # as if not installed\n"
            "from slimops.cli import main; raise SystemExit(main(['serve', '--host', '127.0.0.1']))")
    env = clean_env(AIP_HTTP_PORT=str(free_port()), AIP_STORAGE_URI=f"gs://{BUCKET}/digits/v1", TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "slimops[gcs]" in lines[0], done.stderr
    assert list(tmp_path.iterdir()) == []
