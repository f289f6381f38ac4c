"""Shared by the benchmark scripts: machine description and section replacement in BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path

HEADER = "# Benchmarks\n\nEvery number here was measured by the script named with it, on the machine and date given.\n"


def machine() -> str:
    info = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    isa = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX-512 VNNI"),
                                   ("avx_vnni", "AVX-VNNI"), ("avx512_bf16", "AVX512-BF16"), ("amx_int8", "AMX-INT8"),
                                   ("amx_bf16", "AMX-BF16")) if flag in flags]
    vnni = "" if {"avx512_vnni", "avx_vnni"} & flags else ", no int8 dot-product instructions (no VNNI)"
    return f"{cpu}, {os.cpu_count()} cores, {' + '.join(isa) or 'no AVX'}{vnni}, Python {platform.python_version()}"


def stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_section(path: Path, key: str, body: str) -> None:
    """Replace the section between ``<!-- key:start -->`` and ``<!-- key:end -->``, keeping the rest."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    section = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.is_file() else HEADER
    if start in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
