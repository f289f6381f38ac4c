"""The registry's champion as a gate's baseline: ``baseline: champion`` on a validate step.

A scheduled retrain-and-compress should promote a model only when it is not worse than the one serving now. As
in TFX's Evaluator (change thresholds against the blessed model), the gate's own rules (``max_metric_drop``,
``min_speedup``, ``max_size_ratio``, ...) are checked against the registry's current ``champion`` of the model
name, measured again in the same run, on the same data and hardware as the candidate.

- Recipe: ``baseline: champion`` resolves, when the recipe is loaded, to a ``champion: {name, registry_dir,
  tracking_uri}`` entry in the validate step's config (taken from the register / promote steps after it, or
  from ``config.champion``), and the step's baseline input becomes ``source``: the fallback. So every runner's
  step command carries it (``--set champion={...}``) and no adapter needs to know.
- Step: with ``config.champion`` set, validate opens the registry read-only; if it holds a champion for the
  name, its registered files are fetched into the step's scratch folder and verified (``Registry.fetch``:
  gate passed, same report, same files) and used as the baseline. With no registry, no registered model or no
  champion alias yet, the baseline input is used and the gate report, the manifest and a progress line say so.
  A registry that exists but cannot be read is an error, never a silent fallback.
- Caching: the champion is outside the step's inputs, so a gate against it is never cached (``StepCall.cacheable``
  is false, the local runner measures it again).

mlflow (extra ``slimops[registry]``) is imported only when a registry is actually read.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from slimops import progress
from slimops.errors import BadInput
from slimops.steps.register import MODEL_NAME_PATTERN, RegistryLocation

CHAMPION_BASELINE = "champion"  # the baseline id a recipe gives; reserved, no step may use it as its id
LOCATION_KEYS = ("registry_dir", "tracking_uri")


class ChampionRef(RegistryLocation):
    """Where validate finds the champion it compares against (the register/promote steps' name and registry)."""

    name: str = Field(pattern=MODEL_NAME_PATTERN, description="registered model name whose champion is the baseline")


# ----------------------------------------------------------------------------- recipe


def recipe_champion(steps: list, index: int, explicit) -> dict | None:
    """The champion spec for ``steps[index]`` (raw recipe step specs): ``explicit`` (the step's ``config.champion``)
    over the name and registry of the registry steps after it (register, promote). A later one's name, and a later
    one's registry when it sets one, win: the champion lives where promote moves it (promote without a registry
    of its own acts in the one register wrote). None: no name anywhere."""
    from slimops.steps import get_step

    found: dict = {}
    for spec in steps[index + 1:]:
        try:
            role = get_step(spec.step).role
        except BadInput:
            continue  # an unknown step: reported with its own line when the recipe gets there
        if role != "registry" or not isinstance(spec.config, dict):
            continue
        if spec.config.get("name"):
            found["name"] = spec.config["name"]
        if any(spec.config.get(key) for key in LOCATION_KEYS):
            found.update({key: spec.config.get(key) for key in LOCATION_KEYS})
    if isinstance(explicit, dict):
        found.update({k: v for k, v in explicit.items() if v is not None})
    found = {k: v for k, v in found.items() if v is not None}
    return found if found.get("name") else None


# ----------------------------------------------------------------------------- step


@dataclass
class Baseline:
    """What a validate step compares against: the directory, and the record for its report and manifest."""

    path: Path
    record: dict


def resolve_baseline(ctx, champion: ChampionRef | None) -> Baseline:
    """The champion's verified files when ``champion`` is set and the registry holds one, else the step's baseline
    input (``--baseline``), saying why."""
    fallback = Path(ctx.inputs["baseline"])
    record = {"kind": _kind(fallback), "path": str(fallback)}
    if champion is None:
        return Baseline(fallback, record)
    from slimops.registry import CHAMPION, TAG_FILES, TAG_GATE_REPORT, Registry, default_registry_dir

    directory = (Path(champion.registry_dir).expanduser().absolute() if champion.registry_dir
                 else default_registry_dir(ctx.final_out or ctx.out_dir))
    registry = Registry.lookup(directory, champion.tracking_uri)
    version, why = None, None
    if registry is None:
        why = f"no registry at {directory}"
    else:
        _require_mlflow()
        if not registry.has_model(champion.name):
            why = f"no registered model {champion.name!r} in {registry.tracking_uri}"
        else:
            version = registry.alias(champion.name, CHAMPION)
            why = None if version else f"{champion.name!r} in {registry.tracking_uri} has no {CHAMPION} alias"
    where = {"name": champion.name, "registry_dir": str(directory),
             "tracking_uri": registry.tracking_uri if registry else None}
    if version is None:
        against = "the source model" if record["kind"] == "source" else f"the baseline input ({fallback})"
        note = f"no champion for {champion.name} yet ({why}); compared against {against}"
        progress.note(f"validate: {note}", "yellow")
        return Baseline(fallback, {**record, **where, "version": None, "note": note})

    work = Path(ctx.work_dir) if ctx.work_dir else Path(tempfile.mkdtemp(prefix="slimops-champion-"))
    path = registry.fetch(champion.name, version, work / f"champion-{version}")  # GateFailed if not as registered
    registered = registry.client().get_model_version(champion.name, version)
    tags = dict(registered.tags or {})
    progress.note(f"validate: baseline is {champion.name} version {version}, the {CHAMPION} in {registry.tracking_uri}")
    return Baseline(path, {"kind": "champion", **where, "version": version, "artifact_uri": registered.source,
                           "gate_report_sha256": tags.get(TAG_GATE_REPORT), "files_sha256": tags.get(TAG_FILES),
                           "fallback": str(fallback)})


def _kind(path: Path) -> str:
    """``source`` for the recipe's own model (or one from outside slimops), else ``input`` (an earlier step's output)."""
    from slimops.manifest import read_manifest

    try:
        manifest = read_manifest(path)
    except Exception:  # noqa: BLE001 - describe() reports a broken manifest with its own message
        manifest = None
    return "source" if not manifest or manifest.get("step") == "source" else "input"


def _require_mlflow() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise BadInput("validate compares against the registry's champion (config.champion / baseline: champion) "
                       "and mlflow is not installed; pip install 'slimops[registry]'") from None
