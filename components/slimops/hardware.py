"""The CPU a model will serve on: its int8 and bf16 instructions, detected here or named by instance family.

What matters for picking a backend and a precision:
- ``avx512_vnni`` / ``avx_vnni`` / ``amx_int8``: int8 dot products (ORT and OpenVINO INT8 GEMM are fast;
  without them ORT's u8 x s8 products saturate and int8 GEMM is only ~1.4x fp32);
- ``avx512_bf16`` / ``amx_bf16``: bf16 arithmetic (OpenVINO's bf16 precision; its default hint on such CPUs);
- ``avx2`` alone: the baseline x86-64 server CPU.

``target_hardware`` names the serving machine when it is not the build machine: an instance family
(``c7i``, ``aws:m6i``, ``azure:dv5``, ``gcp:c3``, ``c7i.2xlarge``, ``ml.c6i.xlarge``) or a feature list
(``[avx2, avx512_vnni]``). A family's features are those of the CPU generation it runs on (the vendors'
instance pages); where a family spans generations, the older one's.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from pathlib import Path

from slimops.errors import BadInput

FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")

_AVX2 = ("avx2",)
_SKYLAKE = ("avx2", "avx512f")
_ICELAKE = ("avx2", "avx512f", "avx512_vnni")  # Cascade Lake and Ice Lake: AVX-512 VNNI
_SAPPHIRE = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
_ZEN4 = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16")  # AMD Genoa: AVX-512 VNNI + BF16, no AMX
_ARM = None

FAMILIES: dict[str, tuple[str, ...] | None] = {
    # AWS (ml.* SageMaker types map to the same families)
    **dict.fromkeys(("aws:c7i", "aws:m7i", "aws:r7i", "aws:c7i-flex", "aws:m7i-flex", "aws:c8i", "aws:m8i",
                     "aws:r8i"), _SAPPHIRE),
    **dict.fromkeys(("aws:c6i", "aws:m6i", "aws:r6i", "aws:c6in", "aws:m6in"), _ICELAKE),
    **dict.fromkeys(("aws:c5", "aws:m5", "aws:r5"), _SKYLAKE),  # Skylake or Cascade Lake hosts: no VNNI assumed
    **dict.fromkeys(("aws:c6a", "aws:m6a", "aws:r6a"), _AVX2),  # AMD Milan (Zen 3)
    **dict.fromkeys(("aws:c7a", "aws:m7a", "aws:r7a"), _ZEN4),  # AMD Genoa (Zen 4)
    **dict.fromkeys(("aws:c6g", "aws:m6g", "aws:c7g", "aws:m7g", "aws:r7g", "aws:c8g", "aws:m8g"), _ARM),
    # Azure
    **dict.fromkeys(("azure:dv5", "azure:dsv5", "azure:ev5", "azure:esv5", "azure:fsv2"), _ICELAKE),
    **dict.fromkeys(("azure:dv6", "azure:dsv6", "azure:ev6", "azure:esv6"), _SAPPHIRE),
    **dict.fromkeys(("azure:dasv5", "azure:easv5"), _AVX2),
    **dict.fromkeys(("azure:dasv6", "azure:easv6", "azure:fasv6"), _ZEN4),
    **dict.fromkeys(("azure:dpsv5", "azure:epsv5", "azure:dpsv6"), _ARM),
    # Google Cloud
    **dict.fromkeys(("gcp:c3", "gcp:c4"), _SAPPHIRE),
    **dict.fromkeys(("gcp:n2", "gcp:c2"), _ICELAKE),
    **dict.fromkeys(("gcp:n2d",), _AVX2),
    **dict.fromkeys(("gcp:c3d", "gcp:n4d", "gcp:c4d"), _ZEN4),
    **dict.fromkeys(("gcp:t2a", "gcp:c4a"), _ARM),
}


@dataclass(frozen=True)
class Hardware:
    name: str  # the CPU model, or the family / feature list it was named by
    source: str  # "detected", "family", or "features"
    features: frozenset[str]

    @property
    def vnni(self) -> bool:
        return bool(self.features & {"avx512_vnni", "avx_vnni", "amx_int8"})

    @property
    def bf16(self) -> bool:
        return bool(self.features & {"avx512_bf16", "amx_bf16"})

    @property
    def amx(self) -> bool:
        return bool(self.features & {"amx_int8", "amx_bf16"})

    @property
    def level(self) -> str:
        """One word for the int8/bf16 class: amx, vnni+bf16, vnni, avx2 or none."""
        if self.amx:
            return "amx"
        if self.vnni and self.bf16:
            return "vnni+bf16"
        if self.vnni:
            return "vnni"
        return "avx2" if "avx2" in self.features else "none"

    def record(self) -> dict:
        return {"name": self.name, "source": self.source, "features": sorted(self.features), "level": self.level}


def detect() -> Hardware:
    """This machine's CPU, from /proc/cpuinfo (Linux x86-64)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and not flags:
            flags = set(value.split())
        elif key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
            model = value.strip()
    return Hardware(model, "detected", frozenset(f for f in FEATURES if f in flags))


def family_key(name: str) -> str:
    """``c7i.2xlarge`` / ``ml.c7i.xlarge`` / ``C7i`` -> ``aws:c7i``; ``azure:Dv5`` -> ``azure:dv5``."""
    name = name.strip().lower()
    if ":" not in name:
        name = "aws:" + name
    cloud, _, family = name.partition(":")
    if cloud == "aws":
        family = re.sub(r"^ml\.", "", family).split(".")[0]
    return f"{cloud}:{family}"


def resolve(target: str | list[str] | None) -> Hardware:
    """The serving CPU: detected (None), an instance family (a string) or a feature list. BadInput otherwise."""
    if target is None:
        return detect()
    if isinstance(target, str):
        key = family_key(target)
        if key not in FAMILIES:
            clouds = sorted({k.split(":")[0] for k in FAMILIES})
            raise BadInput(f"target_hardware {target!r} is not an instance family slimops knows ({', '.join(clouds)}"
                           f": e.g. c7i, aws:c6a, azure:dv5, gcp:c3) nor a feature list; give the features, "
                           f"e.g. [avx2, avx512_vnni]")
        features = FAMILIES[key]
        if features is None:
            raise BadInput(f"target_hardware {target!r} is an ARM instance family: slimops compiles for x86-64 "
                           "CPUs only (ORT and OpenVINO int8 on ARM are not measured); pick an x86-64 family")
        return Hardware(key, "family", frozenset(features))
    unknown = [f for f in target if f not in FEATURES]
    if unknown:
        raise BadInput(f"target_hardware feature {unknown[0]!r} is unknown; known: {', '.join(FEATURES)}")
    if "avx2" not in target:
        raise BadInput("target_hardware features must include avx2 (slimops targets x86-64 server CPUs)")
    return Hardware("features", "features", frozenset(target))


def openvino_precisions(hw: Hardware) -> list[str]:
    """OpenVINO float precisions worth building there: f32 always, bf16 where the CPU computes in bf16."""
    return ["fp32", "bf16"] if hw.bf16 else ["fp32"]
