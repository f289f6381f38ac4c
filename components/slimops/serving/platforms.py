"""Each hosting platform's container contract, for ``slimops serve --platform``: which port to listen on, which
routes to answer, and where the platform puts the model.

| platform | started as | port | health (GET) | predict (POST) | model directory |
|---|---|---|---|---|---|
| sagemaker | ``<image> serve`` | 8080 (``SAGEMAKER_BIND_TO_PORT``) | ``/ping`` | ``/invocations`` | ``/opt/ml/model`` |
| vertex | args ``serve`` | ``AIP_HTTP_PORT`` (8080) | ``AIP_HEALTH_ROUTE`` | ``AIP_PREDICT_ROUTE`` | ``AIP_STORAGE_URI`` (gs://, downloaded at startup, or a local path) |
| azureml | args ``serve`` | 5001 | ``/`` (liveness and readiness) | ``/score`` | ``AZUREML_MODEL_DIR`` |
| kserve | args ``serve`` | 8080 | ``/v2/health/live``, ``/v2/health/ready`` | ``/v2/models/{name}/infer`` | ``/mnt/models`` |

The deploy targets (slimops.deploy) register the image with exactly these values (``SAGEMAKER_ROUTES``,
``VERTEX_ROUTES``, ``AZUREML_ROUTES`` below are the one place they live). Every mode also answers the Open
Inference Protocol v2 routes, so one model is reachable the same way everywhere.

``auto`` (the default) reads the platform from ``SLIMOPS_SERVE_PLATFORM``, else from the platform's own
variables (``AIP_HTTP_PORT``/``AIP_PREDICT_ROUTE``/``AIP_HEALTH_ROUTE``: Vertex AI; ``AZUREML_MODEL_DIR``: Azure ML; ``SAGEMAKER_BIND_TO_PORT`` or
``/opt/ml/model`` with no model given: SageMaker); none of them: a local server, as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from slimops.errors import BadInput

PLATFORMS = ("kserve", "sagemaker", "vertex", "azureml")
PLATFORM_ENV = "SLIMOPS_SERVE_PLATFORM"
SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
KSERVE_MODEL_DIR = Path("/mnt/models")  # where KServe's storage initializer puts storageUri

# What the deploy targets declare to each platform, and what the server answers by default.
SAGEMAKER_ROUTES = {"port": 8080, "health": "/ping", "predict": "/invocations"}
VERTEX_ROUTES = {"port": 8080, "health": "/health", "predict": "/predict"}
# The Azure ML inference server's own routes (azureml-inference-server-http: port 5001, "/" and "/score").
AZUREML_ROUTES = {"port": 5001, "liveness": "/", "readiness": "/", "predict": "/score"}


@dataclass(frozen=True)
class Contract:
    """What one platform expects of the serving process."""

    platform: str | None  # None: a local server (OIP v2 only, loopback by default)
    port: int = 8080
    model_dir: Path | None = None  # where the platform put the model; None: it must be given
    health_routes: tuple[str, ...] = ()
    predict_route: str | None = None
    model_uri: str | None = None  # Vertex AI's gs:// model location, downloaded at startup (slimops.serving.gcs)

    @property
    def host(self) -> str:
        """A platform's container listens on every interface (its health checks come from outside it)."""
        return "127.0.0.1" if self.platform is None else "0.0.0.0"

    @property
    def fronted(self) -> bool:
        """SageMaker, Vertex AI and Azure ML authenticate every request (IAM, keys) before it reaches the
        container, which nothing else can reach: no token is needed. A KServe pod is reachable from the whole
        cluster, so beyond loopback it needs --token-file like any other server."""
        return self.platform in ("sagemaker", "vertex", "azureml")


def detect(env=os.environ, model_given: bool = False) -> str | None:
    """The platform this process runs under, from the platform's own environment variables."""
    if any(env.get(name) for name in ("AIP_HTTP_PORT", "AIP_PREDICT_ROUTE", "AIP_HEALTH_ROUTE")):
        return "vertex"
    if env.get("AZUREML_MODEL_DIR"):
        return "azureml"
    if env.get("SAGEMAKER_BIND_TO_PORT") or (not model_given and SAGEMAKER_MODEL_DIR.is_dir()):
        return "sagemaker"
    return None


def resolve(choice: str | None, env=os.environ, model_given: bool = False) -> Contract:
    """The contract for ``--platform CHOICE`` (None: ``$SLIMOPS_SERVE_PLATFORM``, else ``auto``)."""
    choice = (choice or env.get(PLATFORM_ENV) or "auto").strip().lower()
    if choice not in ("auto", *PLATFORMS):
        raise BadInput(f"serve platform {choice[:40]!r} is unknown (from --platform or ${PLATFORM_ENV}); use auto, "
                       f"{', '.join(PLATFORMS)}")
    platform = detect(env, model_given) if choice == "auto" else choice
    if platform is None:
        return Contract(None)
    if platform == "sagemaker":
        # SAGEMAKER_BIND_TO_PORT: set when the container is one of several behind one endpoint.
        return Contract("sagemaker", _port(env, "SAGEMAKER_BIND_TO_PORT", SAGEMAKER_ROUTES["port"]),
                        SAGEMAKER_MODEL_DIR, (SAGEMAKER_ROUTES["health"],), SAGEMAKER_ROUTES["predict"])
    if platform == "vertex":
        location = None if model_given else _vertex_model_location(env)
        return Contract("vertex", _port(env, "AIP_HTTP_PORT", VERTEX_ROUTES["port"]),
                        location if isinstance(location, Path) else None,
                        (_route(env, "AIP_HEALTH_ROUTE", VERTEX_ROUTES["health"]),),
                        _route(env, "AIP_PREDICT_ROUTE", VERTEX_ROUTES["predict"]),
                        location if isinstance(location, str) else None)
    if platform == "azureml":
        model_dir = env.get("AZUREML_MODEL_DIR")
        return Contract("azureml", AZUREML_ROUTES["port"], Path(model_dir) if model_dir else None,
                        tuple(dict.fromkeys((AZUREML_ROUTES["liveness"], AZUREML_ROUTES["readiness"]))),
                        AZUREML_ROUTES["predict"])
    return Contract("kserve", 8080, KSERVE_MODEL_DIR)


def _port(env, name: str, default: int) -> int:
    text = env.get(name)
    if not text:
        return default
    if not (text.isascii() and text.isdigit() and 0 < int(text) <= 65535):
        raise BadInput(f"${name} is {text[:40]!r}, not a port number (1-65535)")
    return int(text)


def _route(env, name: str, default: str) -> str:
    route = env.get(name) or default
    if not route.startswith("/") or any(c.isspace() for c in route) or "{" in route:
        raise BadInput(f"${name} is {route[:80]!r}; a route is a path starting with '/' (no spaces or braces)")
    return route


def _vertex_model_location(env) -> Path | str | None:
    """``AIP_STORAGE_URI`` names where Vertex AI copied the model: a gs:// URI (returned as is, downloaded at
    startup) or a local path (a mounted volume)."""
    uri = env.get("AIP_STORAGE_URI")
    if not uri:
        return None
    if uri.startswith("gs://"):
        from slimops.serving.gcs import split_uri

        split_uri(uri)  # a malformed URI fails here, before anything else starts
        return uri
    local = uri.removeprefix("file://")
    if "://" in local:
        raise BadInput(f"AIP_STORAGE_URI is {uri[:120]}; slimops serve takes a gs:// URI or a local directory")
    return Path(local)


def locate_model(root: Path, where: str) -> Path:
    """The model directory the platform put under ``root``: ``root`` itself, or its only sub-directory that holds a
    model (Azure ML mounts a registered folder as ``$AZUREML_MODEL_DIR/<folder name>``; a tarball may wrap the
    files in one folder). ``where`` names ``root`` in errors (e.g. "AZUREML_MODEL_DIR")."""
    if not root.is_dir():
        raise BadInput(f"{where} {root} is not a directory; the platform did not provide the model there (or give "
                       "the model directory with --champion)")
    if _holds_model(root):
        return root
    candidates = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.is_symlink() and _holds_model(p)]
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise BadInput(f"{where} {root} holds no model directory slimops can serve (model folders found: {found}); "
                       "it must hold the model's files (manifest.json and the .onnx), or one folder that does")
    return candidates[0]


def _holds_model(path: Path) -> bool:
    return (path / "manifest.json").is_file() or (path / "model.onnx.zst").is_file() or any(path.glob("*.onnx"))
