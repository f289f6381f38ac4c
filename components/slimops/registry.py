"""The model registry (MLflow) behind register / promote / rollback / serve, and the promotion audit log.

A *registry directory* holds what slimops keeps beside MLflow:
- ``registry.json``: the tracking (and registry) URI, so later commands need only the directory;
- ``audit.jsonl``: one JSON line per promotion and rollback (who, when, from, to, why), append-only;
- by default also the MLflow store itself: ``mlflow.db`` (SQLite) and ``artifacts/``.
Any MLflow tracking URI works (``tracking_uri``); the audit log stays in the directory.

What is registered are the validated model's *files* (ONNX, tokenizer, gate_report.json, manifest.json),
logged as plain run artifacts, with a model version pointing at them: no MLflow flavour, no pickle.
Aliases: ``challenger`` on registration, ``champion`` on promotion. The registered model's tag
``slimops.champion_history`` keeps the chain of champions, so a rollback restores the one before.

Invariant: ``champion`` only ever points at a version whose registered files pass ``require_passing_gate``
and whose gate report has the sha256 recorded at registration. mlflow is imported only here.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from slimops.errors import BadInput, GateFailed
from slimops.manifest import digest_of, sha256_file, write_json_atomic

REGISTRY_FILE = "registry.json"
AUDIT_LOG = "audit.jsonl"
CHAMPION, CHALLENGER = "champion", "challenger"
ARTIFACT_PATH = "model"
EXPERIMENT = "slimops"
# Model version / registered model tags (MLflow keeps tag values up to 5000 characters in SQL stores).
TAG_GATE_PASSED = "slimops.gate_passed"
TAG_GATE_REPORT = "slimops.gate_report_sha256"
TAG_FILES = "slimops.files_sha256"
TAG_MANIFEST = "slimops.manifest_sha256"
TAG_LINEAGE = "slimops.lineage"
TAG_CANARY_POLICY = "slimops.canary_policy"
TAG_CANARY_STATUS = "slimops.canary_status"
TAG_HISTORY = "slimops.champion_history"
_TAG_LIMIT = 5000
_HISTORY_KEEP = 50


def default_registry_dir(out: Path) -> Path:
    """Where a step keeps the registry when none is configured: ``$SLIMOPS_REGISTRY_DIR``, else ``<run dir>/registry``.

    Under ``slimops run`` a step writes ``<run dir>/steps/<id>``; a lone ``slimops step`` writes OUT, and the
    registry goes beside it. Orchestrators whose runs must share one registry (every scheduled run promoting
    against the same champion) set the environment variable, so the step's config stays the recipe's own.
    """
    if os.environ.get("SLIMOPS_REGISTRY_DIR"):
        return Path(os.environ["SLIMOPS_REGISTRY_DIR"]).expanduser().absolute()
    parent = Path(out).absolute().parent
    return (parent.parent if parent.name == "steps" else parent) / "registry"


def actor() -> str:
    """Who acts, for the audit log: $SLIMOPS_ACTOR (a pipeline can name itself) or user@host."""
    if os.environ.get("SLIMOPS_ACTOR"):
        return os.environ["SLIMOPS_ACTOR"]
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def gate_report_sha256(model_dir: Path) -> str:
    return sha256_file(Path(model_dir) / "gate_report.json")


def lineage_summary(manifest: dict | None) -> str:
    """``source(<path or package>) > train > export > quantize > validate``, each with a short output digest."""
    chain = []
    node = manifest
    while node:
        if node.get("step") == "source":
            chain.append(f"source({node.get('path', '?')})")
        else:
            chain.append(f"{node.get('step')}[{digest_of(node.get('outputs', {}))[:12]}]")
        node = node.get("parent")
    text = " > ".join(reversed(chain))
    return text if len(text) <= _TAG_LIMIT else "... " + text[-(_TAG_LIMIT - 4):]


@dataclass
class Registry:
    directory: Path
    tracking_uri: str

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, directory: Path | str, tracking_uri: str | None = None, create: bool = True) -> "Registry":
        """The registry in ``directory``: its recorded URI, or ``tracking_uri``, or a SQLite store inside it."""
        directory = Path(directory).absolute()
        _refuse_links(directory)
        recorded = directory / REGISTRY_FILE
        if recorded.is_file():
            known = _recorded_uri(recorded)
            if tracking_uri and known and tracking_uri != known:
                raise BadInput(f"registry {directory} records tracking URI {known}, not {tracking_uri}; "
                               "use another registry directory for another store")
            tracking_uri = tracking_uri or known
        elif not create:
            raise BadInput(f"{directory} is not a slimops registry (no {REGISTRY_FILE}); give the registry "
                           "directory a register step wrote (by default <run dir>/registry)")
        tracking_uri = tracking_uri or f"sqlite:///{directory / 'mlflow.db'}"
        if not recorded.is_file():
            directory.mkdir(parents=True, exist_ok=True)
            write_json_atomic(recorded, {"tracking_uri": tracking_uri})
        return cls(directory, tracking_uri)

    @classmethod
    def lookup(cls, directory: Path | str, tracking_uri: str | None = None) -> "Registry | None":
        """The registry in ``directory`` for reading, or None when there is none yet: no ``registry.json`` there
        and no ``tracking_uri`` given. Creates and writes nothing (a validate step comparing against the champion
        only reads)."""
        directory = Path(directory).absolute()
        _refuse_links(directory)
        recorded = directory / REGISTRY_FILE
        if recorded.is_file():
            known = _recorded_uri(recorded)
            if tracking_uri and tracking_uri != known:
                raise BadInput(f"registry {directory} records tracking URI {known}, not {tracking_uri}; "
                               "use another registry directory for another store")
            return cls(directory, known)
        return cls(directory, tracking_uri) if tracking_uri else None

    @property
    def local(self) -> bool:
        return self.tracking_uri == f"sqlite:///{self.directory / 'mlflow.db'}"

    def client(self):
        _quiet_mlflow()
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    # ------------------------------------------------------------------ register

    def register(self, model_dir: Path, name: str, report: dict, manifest: dict | None,
                 canary_policy: dict | None = None) -> dict:
        """Log the validated directory's files as run artifacts, create a model version on them, tag it, and
        point ``challenger`` at it. Returns the registration record."""
        from mlflow.entities import Metric, Param, RunTag

        client = self.client()
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            location = (self.directory / "artifacts").as_uri() if self.local else None
            experiment_id = client.create_experiment(EXPERIMENT, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
        report_sha = gate_report_sha256(model_dir)
        tags = {
            TAG_GATE_PASSED: str(bool(report.get("passed"))).lower(),
            TAG_GATE_REPORT: report_sha,
            TAG_FILES: digest_of(report.get("candidate_files", {})),
            TAG_MANIFEST: sha256_file(Path(model_dir) / "manifest.json") if (Path(model_dir) / "manifest.json").is_file() else "",
            TAG_LINEAGE: lineage_summary(manifest),
            "slimops.gate_reasons": "; ".join(report.get("reasons", []))[:_TAG_LIMIT],
            "slimops.metric": str(report.get("metrics", {}).get("metric", "")),
        }
        if canary_policy is not None:
            tags[TAG_CANARY_POLICY] = json.dumps(canary_policy, sort_keys=True)
        run = client.create_run(experiment_id, tags={"mlflow.runName": f"register-{name}", **tags})
        run_id = run.info.run_id
        try:
            metrics = [Metric(key, float(value), 0, 0) for key, value in report.get("metrics", {}).items()
                       if isinstance(value, (int, float)) and not isinstance(value, bool)]
            params = [Param(k, str(v)[:6000]) for k, v in report.get("policy", {}).items() if v is not None]
            client.log_batch(run_id, metrics=metrics, params=params, tags=[RunTag(k, v) for k, v in tags.items()])
            client.log_artifacts(run_id, str(model_dir), artifact_path=ARTIFACT_PATH)
            client.set_terminated(run_id)
        except Exception:
            client.set_terminated(run_id, status="FAILED")
            raise
        if not _exists(client, name):
            client.create_registered_model(name, description="registered by slimops: gated compressed models")
        version = client.create_model_version(name, source=f"{run.info.artifact_uri}/{ARTIFACT_PATH}",
                                              run_id=run_id, tags=tags)
        client.set_registered_model_alias(name, CHALLENGER, version.version)
        return {"name": name, "version": str(version.version), "run_id": run_id, "source": version.source,
                "tracking_uri": self.tracking_uri, "registry_dir": str(self.directory), "tags": tags}

    # ------------------------------------------------------------------ lookups

    def alias(self, name: str, alias: str) -> str | None:
        """The version an alias points at, or None."""
        client = self.client()
        if not _exists(client, name):
            return None
        aliases = client.get_registered_model(name).aliases or {}
        version = aliases.get(alias)
        return None if version is None else str(version)

    def has_model(self, name: str) -> bool:
        return _exists(self.client(), name)

    def model_names(self) -> list[str]:
        return [m.name for m in self.client().search_registered_models()]

    def version_tags(self, name: str, version: str) -> dict:
        return dict(self.client().get_model_version(name, str(version)).tags or {})

    def find_version(self, name: str, report_sha: str) -> str | None:
        """The newest version registered with this gate report hash."""
        client = self.client()
        if not _exists(client, name):
            return None
        found = client.search_model_versions(f"name = '{name}' and tags.`{TAG_GATE_REPORT}` = '{report_sha}'")
        return max((str(v.version) for v in found), key=int, default=None)

    def history(self, name: str) -> list[str]:
        tags = self.client().get_registered_model(name).tags or {}
        return json.loads(tags.get(TAG_HISTORY, "[]"))

    def fetch(self, name: str, version: str, dest: Path | None = None) -> Path:
        """The registered files of a version, downloaded (a local store copies them) and checked against their
        gate report: raises GateFailed if they differ from the validated files or the registered report."""
        import mlflow

        client = self.client()
        mv = client.get_model_version(name, str(version))
        dest = Path(dest) if dest else self.directory / "serving" / name / str(version)
        if not dest.is_dir():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
            try:  # downloaded beside dest, renamed into place whole: a half download is never served
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp),
                                                                 tracking_uri=self.tracking_uri))
                try:
                    os.replace(local, dest)
                except OSError:
                    if not dest.is_dir():  # else another process fetched it first; it is verified below
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        self.verify(name, str(version), dest, dict(mv.tags or {}))
        return dest

    def verify(self, name: str, version: str, model_dir: Path, tags: dict) -> dict:
        from slimops.gate import require_passing_gate

        report = require_passing_gate(model_dir)
        actual = gate_report_sha256(model_dir)
        if tags.get(TAG_GATE_REPORT) != actual:
            raise GateFailed(f"{name} version {version}: its gate report (sha256 {actual[:12]}) is not the one "
                             f"registered ({str(tags.get(TAG_GATE_REPORT))[:12]}); validate and register the model again")
        if tags.get(TAG_FILES) != digest_of(report.get("candidate_files", {})):
            raise GateFailed(f"{name} version {version}: its files are not the ones registered; validate and "
                             "register the model again")
        return report

    # ------------------------------------------------------------------ promote / rollback

    def promote(self, name: str, version: str, why: str, expected_report_sha: str | None = None) -> dict:
        """Point ``champion`` at ``version`` after checking its registered files pass their gate."""
        version = str(version)
        client = self.client()
        tags = dict(client.get_model_version(name, version).tags or {})
        if expected_report_sha is not None and tags.get(TAG_GATE_REPORT) != expected_report_sha:
            raise GateFailed(f"{name} version {version} was registered with gate report sha256 "
                             f"{str(tags.get(TAG_GATE_REPORT))[:12]}, the model being promoted has "
                             f"{expected_report_sha[:12]}; register this exact artifact first")
        self.fetch(name, version)
        previous = self.alias(name, CHAMPION)
        if previous == version:
            return self.audit("promote", name, previous, version, why, noop=True)
        history = [v for v in self.history(name) if v != version] + [version]
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_registered_model_tag(name, TAG_HISTORY, json.dumps(history[-_HISTORY_KEEP:]))
        if self.alias(name, CHALLENGER) == version:
            client.delete_registered_model_alias(name, CHALLENGER)  # it is the champion now
        return self.audit("promote", name, previous, version, why, gate_report_sha256=tags.get(TAG_GATE_REPORT))

    def rollback(self, name: str, why: str) -> dict:
        """Restore the champion before the current one (checked like a promotion)."""
        client = self.client()
        if not _exists(client, name):
            raise BadInput(f"no registered model {name!r} in {self.tracking_uri}; known: "
                           f"{', '.join(self.model_names()) or 'none'}")
        current = self.alias(name, CHAMPION)
        history = self.history(name)
        if current is None or current not in history or history.index(current) == 0:
            raise BadInput(f"{name} has no earlier champion to roll back to (champion: {current or 'none'}); "
                           "promote a validated version instead")
        target = history[history.index(current) - 1]
        self.fetch(name, target)
        client.set_registered_model_alias(name, CHAMPION, target)
        client.set_registered_model_tag(name, TAG_HISTORY, json.dumps(history[: history.index(current)]))
        client.set_model_version_tag(name, current, "slimops.rolled_back", _now())
        return self.audit("rollback", name, current, target, why)

    def reject_challenger(self, name: str, version: str, why: str, details: dict | None = None) -> dict:
        """A canary that breached its SLO: drop the ``challenger`` alias (a restarted server will not send it
        traffic again) and flag the version. ``champion`` is never touched: it was never moved."""
        extra, champion = dict(details or {}), None
        try:
            client = self.client()
            if self.alias(name, CHALLENGER) == str(version):
                client.delete_registered_model_alias(name, CHALLENGER)
            client.set_model_version_tag(name, str(version), TAG_CANARY_STATUS,
                                         f"rolled_back {_now()}: {why}"[:_TAG_LIMIT])
            champion = self.alias(name, CHAMPION)
        except Exception as err:  # the traffic is already off the challenger; the audit line must still be written
            extra["registry_error"] = f"{type(err).__name__}: {err}"[:500]
        return self.audit("canary_rollback", name, str(version), champion, why, **extra)

    # ------------------------------------------------------------------ audit

    def audit(self, action: str, name: str, from_version, to_version, why: str, **extra) -> dict:
        entry = {"time": _now(), "action": action, "model": name, "from": from_version, "to": to_version,
                 "who": actor(), "why": why, "tracking_uri": self.tracking_uri, **extra}
        append_audit(self.directory / AUDIT_LOG, entry)
        return entry

    def audit_entries(self) -> list[dict]:
        return read_audit(self.directory / AUDIT_LOG)


def _refuse_links(directory: Path) -> None:
    for name in (REGISTRY_FILE, AUDIT_LOG, "serving", "artifacts", "mlflow.db"):
        if (directory / name).is_symlink():  # a link would make promote write or append outside the registry
            raise BadInput(f"{directory / name} is a symbolic link; a registry directory holds its own files")


def _recorded_uri(path: Path) -> str | None:
    """The tracking URI a registry directory records; one line, exit 2, for a file slimops did not write."""
    try:
        value = json.loads(path.read_bytes()) if path.stat().st_size < 1 << 20 else None
    except (ValueError, RecursionError):
        value = None
    uri = value.get("tracking_uri") if isinstance(value, dict) else None
    if not isinstance(uri, str) or not uri or len(uri) > 2000 or "\n" in uri:
        raise BadInput(f"{path} is not a registry file slimops wrote (no tracking_uri string); give the registry "
                       "directory a register step wrote, or fix the file")
    return uri


def append_audit(path: Path, entry: dict) -> None:
    """One line per event, written with one O_APPEND write and synced: concurrent writers never interleave
    inside a line, and nothing is ever rewritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        raise BadInput(f"cannot append to the audit log {path} ({err.strerror}); it must be a plain file") from None
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_audit(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except (ValueError, RecursionError):
                raise BadInput(f"{path}:{number} is not a JSON line; the audit log was edited, restore it") from None
    return entries


def _exists(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException as err:
        if getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _quiet_mlflow() -> None:
    # MLflow prints alembic migration logs and "creating a new experiment" chatter; steps keep stderr for errors.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    for logger in ("mlflow", "alembic"):
        logging.getLogger(logger).setLevel(logging.WARNING)
