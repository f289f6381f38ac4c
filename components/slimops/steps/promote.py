"""promote: move the registry's ``champion`` alias to a registered, validated model.

The gate is checked twice, on both copies: the input directory must hold a passing gate report that still
matches its files (``require_passing_gate``), and the registered version's files, fetched from the registry,
must pass the same check and carry the same gate report sha256 as the input. Any mismatch exits 3 and leaves
``champion`` where it was. Every promotion is appended to the registry's audit log.

``strategy: direct`` moves champion now. ``strategy: canary`` leaves champion serving, keeps the version as
``challenger`` and tags it with the canary policy: ``slimops serve`` then sends it ``canary.percent`` of the
traffic and rolls it back by itself if it breaches the SLO (the first model of a name has nothing to canary
against and becomes champion directly). After a good canary, ``slimops promote --version N`` finishes it.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field

from slimops.errors import BadInput
from slimops.manifest import read_manifest
from slimops.serving.canary import CanaryPolicy
from slimops.steps import Step, StepResult
from slimops.steps.register import MODEL_NAME_PATTERN, RegistryLocation, carry_validated


class PromoteConfig(RegistryLocation):
    name: str | None = Field(None, pattern=MODEL_NAME_PATTERN,
                             description="registered model name; default: the one the input was registered as")
    strategy: Literal["direct", "canary"] = Field("direct", description="direct: champion now; canary: challenger "
                                                                       "under a canary in `slimops serve` first")
    canary: CanaryPolicy = Field(default_factory=CanaryPolicy, description="traffic share and SLO for the canary "
                                                                           "(also read by `slimops serve`)")
    reason: str = Field("gate passed", description="why, for the audit log")


class Promote(Step):
    name = "promote"
    summary = "Move the registry's champion alias to a registered model whose gate passed (audited); or start a canary"
    Config = PromoteConfig
    role = "registry"
    side_effects = True
    extra = "registry"

    def run(self, ctx, config: PromoteConfig) -> StepResult:
        from slimops.gate import require_passing_gate
        from slimops.registry import CHAMPION, CHALLENGER, TAG_CANARY_POLICY, Registry, gate_report_sha256

        require_passing_gate(ctx.model_dir)  # exit 3 before the registry is touched
        report_sha = gate_report_sha256(ctx.model_dir)
        registration = ((read_manifest(ctx.model_dir) or {}).get("details") or {}).get("registration") or {}
        name = config.name or registration.get("name")
        if not name:
            raise BadInput(f"{ctx.model_dir} was not registered (no registration in its manifest) and promote has no "
                           "name; put a register step before promote, or set name")
        if config.registry_dir or config.tracking_uri or not registration:
            registry = config.open(ctx.final_out or ctx.out_dir)
        else:
            registry = Registry.open(registration["registry_dir"], registration["tracking_uri"])
        version = registry.find_version(name, report_sha)
        if version is None:
            raise BadInput(f"no version of {name!r} in {registry.tracking_uri} was registered with this model's gate "
                           f"report (sha256 {report_sha[:12]}); run the register step on it first")

        previous = registry.alias(name, CHAMPION)
        if config.strategy == "canary" and previous is not None and previous != version:
            client = registry.client()
            client.set_model_version_tag(name, version, TAG_CANARY_POLICY,
                                         json.dumps(config.canary.model_dump(), sort_keys=True))
            registry.fetch(name, version)  # the canary will serve these files: check them now
            client.set_registered_model_alias(name, CHALLENGER, version)
            entry = registry.audit("canary_start", name, previous, version, config.reason,
                                   canary=config.canary.model_dump(), gate_report_sha256=report_sha)
            action = "canary"
        else:
            why = config.reason if previous is not None or config.strategy == "direct" else \
                f"{config.reason} (first champion of {name}: nothing to canary against)"
            entry = registry.promote(name, version, why, expected_report_sha=report_sha)
            action = "noop" if entry.get("noop") else "promoted"
        carry_validated(ctx)
        return StepResult(model_info=ctx.model_info, metrics={"version": int(version)},
                          details={"action": action, "name": name, "version": version, "previous_champion": previous,
                                   "champion": registry.alias(name, CHAMPION),
                                   "challenger": registry.alias(name, CHALLENGER),
                                   "registry_dir": str(registry.directory), "tracking_uri": registry.tracking_uri,
                                   "audit": entry})


STEP = Promote
