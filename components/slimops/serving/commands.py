"""``slimops serve``, ``slimops promote`` and ``slimops rollback``: argument parsing and wiring only.

``slimops.cli`` adds these subcommands through ``add_commands``; errors follow the CLI's contract
(one ``slimops: error:`` line, exit 2; a gate problem exits 3).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from pathlib import Path

from slimops.errors import EXIT_OK, BadInput
from slimops.serving.limits import Limits


def add_commands(sub) -> None:
    serve = sub.add_parser("serve", help="serve ONNX models (or OpenVINO IR) over the Open Inference Protocol v2 (REST), with a canary; "
                                         "--platform: under SageMaker, Vertex AI, Azure ML or KServe's container "
                                         "contract")
    platform = serve.add_argument_group(
        "platform (a hosting platform's container contract: its port, health and predict routes, model directory)")
    platform.add_argument("--platform", choices=("auto", "kserve", "sagemaker", "vertex", "azureml"),
                          help="default: $SLIMOPS_SERVE_PLATFORM, else auto (read from the platform's own environment: "
                               "AIP_* Vertex AI, AZUREML_MODEL_DIR Azure ML, /opt/ml/model SageMaker; none: local)")
    source = serve.add_argument_group("what to serve (a registry, or model directories; under a platform, default: "
                                      "the platform's model directory)")
    source.add_argument("--registry", help="registry directory (default store: <run dir>/registry): serves the "
                                           "champion and, under canary, the challenger")
    source.add_argument("--model", type=_model_name, help="registered model name (default: the only one in the registry)")
    source.add_argument("--champion", help="a model directory to serve as the champion")
    source.add_argument("--challenger", help="a model directory to serve as the challenger (canary)")
    source.add_argument("--name", default="model", help="model name to serve directories under (default: model)")
    canary = serve.add_argument_group("canary (defaults: the challenger's policy from promote, else 10%% / 1%% errors)")
    canary.add_argument("--canary-percent", type=float, help="share of requests for the challenger, 0-50")
    canary.add_argument("--max-error-rate", type=float, help="roll back above this challenger error rate (0-1)")
    canary.add_argument("--max-p95-ms", type=float, help="roll back above this challenger p95 latency, ms")
    canary.add_argument("--min-requests", type=int, help="challenger requests in the window before judging")
    canary.add_argument("--window-s", type=float, help="sliding window, seconds")
    canary.add_argument("--audit-log", help="model-directory mode: append canary rollbacks to this JSONL file")
    server = serve.add_argument_group("server")
    server.add_argument("--host", help="interface to listen on (default: loopback, where any other needs "
                                       "--token-file; under a platform 0.0.0.0: SageMaker, Vertex AI and Azure ML "
                                       "authenticate requests themselves, KServe needs --token-file)")
    server.add_argument("--port", type=int, help="default: the platform's port, else 8080")
    server.add_argument("--token-file", help="file holding a secret token: requests must send 'Authorization: "
                                             "Bearer <token>' (health checks excepted)")
    from slimops.cli import _positive_int  # 1..1024: a larger pool is a typo ONNX Runtime would try to start

    server.add_argument("--workers", type=_positive_int, default=2, help="inference threads (default 2)")
    server.add_argument("--threads", type=_positive_int, default=1,
                        help="ONNX Runtime intra-op threads per model (default 1)")
    d = Limits()
    limits = serve.add_argument_group("limits (over a size limit: 413; full: 503 + Retry-After; too slow: 504 / 408)")
    limits.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help=f"default {d.max_body_bytes}")
    limits.add_argument("--max-batch", type=int, default=d.max_batch, help=f"rows per request (default {d.max_batch})")
    limits.add_argument("--max-elements", type=int, default=d.max_elements,
                        help=f"tensor elements per request, inputs and outputs each (default {d.max_elements})")
    limits.add_argument("--max-inflight", type=int, default=d.max_inflight,
                        help=f"requests running or waiting at once (default {d.max_inflight})")
    limits.add_argument("--chunk-rows", type=int, default=d.chunk_rows,
                        help=f"rows a batch runs at a time, taking turns with other requests (default {d.chunk_rows})")
    limits.add_argument("--max-connections", type=int, default=d.max_connections,
                        help=f"open connections (default {d.max_connections})")
    limits.add_argument("--request-timeout", type=float, default=d.request_timeout_s,
                        help=f"seconds a request may wait and run (default {d.request_timeout_s:g})")
    limits.add_argument("--body-timeout", type=float, default=d.body_timeout_s,
                        help=f"seconds for a request body to arrive (default {d.body_timeout_s:g})")
    limits.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s,
                        help=f"seconds a connection may go without sending request headers (default "
                             f"{d.idle_timeout_s:g})")
    serve.set_defaults(func=cmd_serve)

    promote = sub.add_parser("promote", help="move the registry's champion to a registered, gated version (audited)")
    promote.add_argument("--registry", required=True, help="registry directory")
    promote.add_argument("--model", type=_model_name, help="registered model name (default: the only one)")
    promote.add_argument("--version", required=True, type=_version, help="model version to make champion")
    promote.add_argument("--reason", default="promoted by hand", help="why, for the audit log")
    promote.set_defaults(func=cmd_promote)

    rollback = sub.add_parser("rollback", help="restore the previous champion (audited)")
    rollback.add_argument("--registry", required=True, help="registry directory")
    rollback.add_argument("--model", type=_model_name, help="registered model name (default: the only one)")
    rollback.add_argument("--reason", default="rolled back by hand", help="why, for the audit log")
    rollback.set_defaults(func=cmd_rollback)


def _model_name(text: str) -> str:
    import re

    from slimops.steps.register import MODEL_NAME_PATTERN

    if not re.match(MODEL_NAME_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a registered model name (letters, digits, . _ -)")
    return text


def _version(text: str) -> str:
    if not (text.isascii() and text.isdigit() and 0 < int(text) < 2**31):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a model version (a whole number from 1)")
    return str(int(text))


def _open(args):
    from slimops.registry import Registry

    registry = Registry.open(args.registry, create=False)
    name = args.model
    if name is None:
        names = registry.model_names()
        if len(names) != 1:
            raise BadInput(f"registry {registry.directory} holds {len(names)} models ({', '.join(names) or 'none'}); "
                           "name one with --model")
        name = names[0]
    return registry, name


def cmd_promote(args) -> int:
    registry, name = _open(args)
    print(json.dumps(registry.promote(name, args.version, args.reason), indent=2))
    return EXIT_OK


def cmd_rollback(args) -> int:
    registry, name = _open(args)
    print(json.dumps(registry.rollback(name, args.reason), indent=2))
    return EXIT_OK


def cmd_serve(args) -> int:
    from slimops.serving.auth import check_exposure, read_token
    from slimops.serving.platforms import locate_model, resolve

    # Checked before any model loads, and long before anything listens.
    given = bool(args.registry or args.champion)
    contract = resolve(args.platform, os.environ, model_given=given)
    host = args.host or contract.host
    port = args.port if args.port is not None else contract.port
    if not contract.fronted:
        check_exposure(host, args.token_file)
    token = read_token(args.token_file) if args.token_file is not None else None
    limits = Limits(max_body_bytes=args.max_body_bytes, max_batch=args.max_batch, max_elements=args.max_elements,
                    max_inflight=args.max_inflight, chunk_rows=args.chunk_rows, max_connections=args.max_connections,
                    request_timeout_s=args.request_timeout, body_timeout_s=args.body_timeout,
                    idle_timeout_s=args.idle_timeout)
    if not 0 <= port <= 65535:
        raise BadInput(f"--port {port} is out of range")
    for flag in ("workers", "threads", "max_body_bytes", "max_batch", "max_elements", "max_inflight", "chunk_rows",
                 "max_connections", "request_timeout", "body_timeout", "idle_timeout"):
        if not getattr(args, flag) > 0:
            raise BadInput(f"--{flag.replace('_', '-')} {getattr(args, flag)} is out of range (it must be above 0)")
    if contract.model_uri and not given:
        from slimops.serving.gcs import download_model

        # Downloaded once, before anything listens; removed when the server stops.
        downloaded = download_model(contract.model_uri, os.environ)
        # uvicorn re-raises the SIGTERM it shut down on; as SystemExit it unwinds through the cleanup below.
        previous = signal.signal(signal.SIGTERM, _exit_on_signal)
        try:
            args.champion = str(locate_model(downloaded, _MODEL_SOURCE[contract.platform]))
            return _serve_models(args, given=False, contract=contract, limits=limits, token=token, host=host,
                                 port=port)
        finally:
            signal.signal(signal.SIGTERM, previous)
            shutil.rmtree(downloaded, ignore_errors=True)
    return _serve_models(args, given, contract, limits, token, host, port)


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


def _serve_models(args, given, contract, limits, token, host, port) -> int:
    from pydantic import ValidationError

    from slimops.core import validation_message
    from slimops.serving.app import Endpoint, serve
    from slimops.serving.canary import CanaryMonitor, CanaryPolicy
    from slimops.serving.model import ServedModel
    from slimops.serving.platforms import locate_model

    if contract.platform and not given and not args.champion:
        if contract.model_dir is None:
            raise BadInput(f"serving for {contract.platform}, but the platform gave no model directory "
                           f"({_MODEL_SOURCE[contract.platform]} is not set); give the model directory with "
                           "--champion")
        args.champion = str(locate_model(contract.model_dir, _MODEL_SOURCE[contract.platform]))
    if bool(args.registry) == bool(args.champion):
        raise BadInput("give either --registry DIR (serve its champion and challenger) or --champion DIR "
                       "[--challenger DIR]")
    if args.challenger and not args.champion:
        raise BadInput("--challenger needs --champion")

    policy_source: dict = {}
    if args.registry:
        from slimops.registry import CHALLENGER, CHAMPION, TAG_CANARY_POLICY, TAG_CANARY_STATUS

        registry, name = _open(args)
        champion_version = registry.alias(name, CHAMPION)
        if champion_version is None:
            raise BadInput(f"{name} has no champion in {registry.directory}; promote a validated version first")
        champion = ServedModel(name, champion_version, registry.fetch(name, champion_version), args.threads)
        challenger = None
        challenger_version = registry.alias(name, CHALLENGER)
        if challenger_version is not None and challenger_version != champion_version:
            tags = registry.version_tags(name, challenger_version)
            if not tags.get(TAG_CANARY_STATUS, "").startswith("rolled_back"):
                challenger = ServedModel(name, challenger_version, registry.fetch(name, challenger_version), args.threads)
                policy_source = json.loads(tags.get(TAG_CANARY_POLICY, "{}"))

        def on_rollback(reason: str, stats: dict) -> None:
            registry.reject_challenger(name, challenger.version, reason, {"window": stats})
            print(f"slimops: canary rolled back: {name} version {challenger.version}: {reason}", file=sys.stderr,
                  flush=True)
    else:
        name = args.name
        champion = ServedModel(name, "champion", Path(args.champion), args.threads)
        challenger = ServedModel(name, "challenger", Path(args.challenger), args.threads) if args.challenger else None
        audit_log = Path(args.audit_log) if args.audit_log else None

        def on_rollback(reason: str, stats: dict) -> None:
            from slimops.registry import _now, actor, append_audit

            if audit_log is not None:
                append_audit(audit_log, {"time": _now(), "action": "canary_rollback", "model": name,
                                         "from": str(Path(args.challenger).absolute()),
                                         "to": str(Path(args.champion).absolute()), "who": actor(), "why": reason,
                                         "window": stats})
            print(f"slimops: canary rolled back: {name} challenger {args.challenger}: {reason}", file=sys.stderr,
                  flush=True)

    overrides = {"percent": args.canary_percent, "max_error_rate": args.max_error_rate, "max_p95_ms": args.max_p95_ms,
                 "min_requests": args.min_requests, "window_s": args.window_s}
    try:
        policy = CanaryPolicy.model_validate({**policy_source, **{k: v for k, v in overrides.items() if v is not None}})
    except ValidationError as err:
        raise BadInput(validation_message(err, "canary policy")) from None
    monitor = CanaryMonitor(policy, on_rollback) if challenger is not None else None
    serve(Endpoint(name, champion, challenger, monitor), host, port, limits, args.workers, token, contract)
    return EXIT_OK


# Where each platform says the model is, for error messages.
_MODEL_SOURCE = {"sagemaker": "SageMaker's model directory", "vertex": "AIP_STORAGE_URI",
                 "azureml": "AZUREML_MODEL_DIR", "kserve": "KServe's model directory"}
