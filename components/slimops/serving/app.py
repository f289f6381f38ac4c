"""The HTTP side of ``slimops serve``: a Starlette app speaking the Open Inference Protocol v2 REST API.

Routes (OIP v2): GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/{v}],
/v2/models/{name}[/versions/{v}]/ready; POST /v2/models/{name}[/versions/{v}]/infer. Extension:
GET /v2/models/{name}/canary (the split, the SLO window and whether the canary was rolled back).

Platform routes (platforms.py, ``slimops serve --platform``): the platform's health routes (GET, 200 once the
model is loaded) and its predict route (POST), which takes an OIP v2 request (answered as ``/infer`` answers)
or ``{"instances": [...]}`` (answered ``{"predictions": [...]}``, instances.py). It is a production route like
``/v2/models/{name}/infer``: the canary counts it. It takes ``Content-Type: application/json`` (or none) and
answers JSON: another Content-Type is 415, an Accept header without JSON 406.

``/v2/models/{name}/infer`` is the production route: it goes to the champion, or to the challenger for the
canary's share. ``/versions/{v}/infer`` reaches one version directly and is not counted by the canary.

Inference runs on a small thread pool (ONNX Runtime releases the GIL), so health checks and 4xx answers stay
fast while models are busy; scheduler.py decides who runs when. Every error is one line of JSON
(``{"error": ...}``): 400/413 for a client's mistake, 401 without the token (auth.py), 408 for a body too
slow to arrive, 503 + Retry-After when full, 504 past the time limit, 500 when a model fails. The server goes on.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

from slimops.serving.auth import OPEN_PATHS, BearerAuth
from slimops.serving.canary import CanaryMonitor
from slimops.serving.connections import http_protocol
from slimops.serving.instances import is_oip, to_oip_request, to_predictions
from slimops.serving.limits import Limits
from slimops.serving.model import ServedModel
from slimops.serving.oip import RequestError, parse_json, quote
from slimops.serving.platforms import Contract
from slimops.serving.scheduler import Overloaded, Scheduler, TimedOut


@dataclass
class Endpoint:
    """What one server serves: a model name, its champion and (optionally) a challenger under canary."""

    name: str
    champion: ServedModel
    challenger: ServedModel | None = None
    monitor: CanaryMonitor | None = None

    def versions(self) -> dict[str, tuple[str, ServedModel]]:
        served = {self.champion.version: ("champion", self.champion)}
        if self.challenger is not None:
            served.setdefault(self.challenger.version, ("challenger", self.challenger))
        return served

    def route(self) -> tuple[str, ServedModel]:
        if self.challenger is not None and self.monitor is not None and self.monitor.choose_challenger():
            return "challenger", self.challenger
        return "champion", self.champion


def build_app(endpoint: Endpoint, limits: Limits = Limits(), workers: int = 2, token: str | None = None,
              contract: Contract = Contract(None)):
    from slimops import __version__
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    scheduler = Scheduler(workers, limits)

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message.splitlines()[0][:1000] if message else ""}, status_code=status,
                            headers=headers)

    def find(request) -> tuple[str, ServedModel] | JSONResponse:
        name, version = request.path_params["name"], request.path_params.get("version")
        if name != endpoint.name:
            return error(404, f"model {quote(name)} is not served here; this server serves {endpoint.name!r}")
        if version is None:
            return "champion", endpoint.champion
        found = endpoint.versions().get(version)
        if found is None:
            return error(404, f"model {quote(name)} has no version {quote(version)} here; served versions: "
                              f"{', '.join(endpoint.versions())}")
        return found

    async def live(request):
        return JSONResponse({"live": True})

    async def ready(request):
        return JSONResponse({"ready": True})

    async def server_metadata(request):
        return JSONResponse({"name": "slimops", "version": __version__, "extensions": ["canary"]})

    async def model_metadata(request):
        found = find(request)
        if isinstance(found, JSONResponse):
            return found
        meta = found[1].metadata()
        if request.path_params.get("version") is None:
            meta["versions"] = list(endpoint.versions())
        return JSONResponse(meta)

    async def model_ready(request):
        found = find(request)
        if isinstance(found, JSONResponse):
            return found
        return JSONResponse({"name": endpoint.name, "ready": True})

    async def canary(request):
        found = find(request)
        if isinstance(found, JSONResponse):
            return found
        status = endpoint.monitor.status() if endpoint.monitor else {"percent": 0.0, "rolled_back": False}
        return JSONResponse({"champion": endpoint.champion.version,
                             "challenger": endpoint.challenger.version if endpoint.challenger else None, **status})

    async def infer(request):
        found = find(request)
        if isinstance(found, JSONResponse):
            return found
        return await _admit_and_answer(request, found, platform=False)

    async def platform_predict(request):
        refused = _refuse_media_types(request)
        if refused is not None:
            return error(*refused)
        return await _admit_and_answer(request, ("champion", endpoint.champion), platform=True)

    async def _admit_and_answer(request, found: tuple[str, ServedModel], platform: bool):
        try:
            raw = await _read_body(request, limits)
        except RequestError as err:  # 408 and 413 leave the body unread: the connection cannot be reused
            return error(err.status, str(err), {"Connection": "close"} if err.status in (408, 413) else None)
        # Admitted once the body is in (a slow upload holds no place), refused before any parsing work.
        try:
            scheduler.admit()
        except Overloaded as err:
            return error(503, str(err), {"Retry-After": "1"})
        try:
            return await _answer(request, found, raw, platform)
        finally:
            scheduler.leave()

    async def _answer(request, found: tuple[str, ServedModel], raw: bytes, platform: bool = False):
        try:
            body = parse_json(raw)
        except RequestError as err:
            return error(err.status, str(err))
        direct = request.path_params.get("version") is not None
        role, model = found if direct else endpoint.route()
        started = time.perf_counter()
        instances = platform and not is_oip(body)
        try:
            if instances:
                body = to_oip_request(body, model)
            arrays, requested, request_id = model.parse(body, limits)
            del body  # the parsed JSON can be many times the size of the arrays: not kept while waiting
            outputs = await scheduler.infer(model, arrays, requested)
        except RequestError as err:  # the client's mistake: not the model's, never counted by the canary
            return error(err.status, str(err))
        except TimedOut as err:  # too slow is a failure of the server, counted like one
            _record(endpoint, role, direct, False, started)
            return error(504, str(err))
        except Exception as err:  # the model failed: 500, counted, and the server goes on
            _record(endpoint, role, direct, False, started)
            return error(500, f"model {endpoint.name} version {model.version} failed: {type(err).__name__}: "
                              f"{str(err).splitlines()[0][:300] if str(err) else ''}")
        _record(endpoint, role, direct, True, started)
        if instances:
            return await asyncio.to_thread(lambda: JSONResponse({"predictions": to_predictions(outputs)}))
        response = {"model_name": endpoint.name, "model_version": model.version, "outputs": outputs}
        if request_id is not None:
            response["id"] = request_id
        return await asyncio.to_thread(JSONResponse, response)  # a large answer renders off the event loop

    async def http_error(request, exc: HTTPException):
        return error(exc.status_code, exc.detail if isinstance(exc.detail, str) else "request refused")

    async def internal_error(request, exc: Exception):
        return error(500, f"internal error: {type(exc).__name__}")

    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route(model, model_metadata, methods=["GET"]),
        Route(versioned, model_metadata, methods=["GET"]),
        Route(model + "/ready", model_ready, methods=["GET"]),
        Route(versioned + "/ready", model_ready, methods=["GET"]),
        Route(model + "/infer", infer, methods=["POST"]),
        Route(versioned + "/infer", infer, methods=["POST"]),
        Route(model + "/canary", canary, methods=["GET"]),
    ]
    # The platform's routes go first: a platform's predict route may look like anything (Vertex AI's default
    # is /v1/endpoints/<id>/deployedModels/<id>:predict).
    platform_routes = [Route(path, ready, methods=["GET"]) for path in contract.health_routes]
    if contract.predict_route:
        platform_routes.append(Route(contract.predict_route, platform_predict, methods=["POST"]))
    routes = platform_routes + routes
    open_paths = OPEN_PATHS | set(contract.health_routes)
    middleware = [Middleware(BearerAuth, token=token, open_paths=open_paths)] if token else []
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={HTTPException: http_error, Exception: internal_error})
    app.state.scheduler = scheduler
    return app


def _refuse_media_types(request) -> tuple[int, str] | None:
    """(status, message) for a body that is not JSON or an answer the client cannot take, else None. SageMaker
    passes InvokeEndpoint's ContentType and Accept through; no Content-Type is read as JSON."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and not (content_type == "application/json" or content_type.endswith("+json")):
        return 415, (f"Content-Type {quote(content_type)} is not accepted; send a JSON body with Content-Type "
                     "application/json")
    accept = [part.split(";")[0].strip().lower() for part in request.headers.get("accept", "").split(",")]
    if any(accept) and not any(a in ("application/json", "application/*", "*/*") or a.endswith("+json")
                               for a in accept):
        return 406, f"Accept {quote(request.headers['accept'])} excludes JSON; this server answers application/json"
    return None


def _record(endpoint: Endpoint, role: str, direct: bool, ok: bool, started: float) -> None:
    if endpoint.monitor is not None and not direct:
        endpoint.monitor.record(role, ok, (time.perf_counter() - started) * 1000)


async def _read_body(request, limits: Limits) -> bytes:
    """The body, if it arrives within ``body_timeout_s`` (else 408) and holds at most ``max_body_bytes`` (else 413).

    The deadline is what cuts off a client that sends its headers and then trickles the body. An oversized body
    is read and dropped (up to ``_DRAIN_FACTOR`` times the limit) before answering, so the client gets its 413
    instead of a connection reset in the middle of its upload; nothing is buffered.
    """
    declared = request.headers.get("content-length")
    if declared is not None and not (declared.isdigit() and len(declared) < 19):
        raise RequestError(f"Content-Length {quote(declared)} is not a byte count this server takes")
    too_big = RequestError(f"request body of {declared or 'more than ' + str(limits.max_body_bytes)} bytes is over "
                           f"this server's limit of {limits.max_body_bytes} bytes; send smaller batches", status=413)
    drain_limit = limits.max_body_bytes * _DRAIN_FACTOR
    if declared is not None and int(declared) > drain_limit:
        raise too_big  # not worth reading: the connection is closed after the answer
    chunks: list[bytes] | None = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body_bytes:
                    chunks = None
                    if size > drain_limit:
                        break
                elif chunks is not None:
                    chunks.append(chunk)
    except TimeoutError:
        raise RequestError(f"the request body did not arrive within {limits.body_timeout_s:g} s", status=408) from None
    if chunks is None:
        raise too_big
    return b"".join(chunks)


_DRAIN_FACTOR = 8


def serve(endpoint: Endpoint, host: str = "127.0.0.1", port: int = 8080, limits: Limits = Limits(),
          workers: int = 2, token: str | None = None, contract: Contract = Contract(None)) -> None:
    """Run the server in the foreground until interrupted."""
    import uvicorn

    app = build_app(endpoint, limits, workers, token, contract)
    challenger = ""
    if endpoint.challenger is not None and endpoint.monitor is not None:
        challenger = f" and version {endpoint.challenger.version} (challenger, {endpoint.monitor.percent:g}% canary)"
    print(f"slimops: serving {endpoint.name} version {endpoint.champion.version} (champion){challenger} on "
          f"http://{host}:{port}/v2/models/{endpoint.name}{' (bearer token required)' if token else ''}",
          file=sys.stderr, flush=True)
    if contract.predict_route:
        print(f"slimops: {contract.platform} routes: GET {', GET '.join(contract.health_routes)}; "
              f"POST {contract.predict_route}", file=sys.stderr, flush=True)
    # One process: the canary's window and the split live in this process's memory.
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, workers=None,
                http=http_protocol(limits.idle_timeout_s), timeout_keep_alive=limits.idle_timeout_s,
                limit_concurrency=limits.max_connections)
