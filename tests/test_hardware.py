"""CPU features for the backend choice: detected from /proc/cpuinfo, or named by instance family / feature list."""

from __future__ import annotations

import pytest

from slimops import hardware
from slimops.errors import BadInput


def test_detect_reads_this_cpu():
    hw = hardware.detect()
    assert hw.source == "detected" and hw.features <= set(hardware.FEATURES)
    flags = open("/proc/cpuinfo").read().split()
    assert ("avx512_vnni" in flags) == ("avx512_vnni" in hw.features)
    assert hw.vnni == any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


@pytest.mark.parametrize("name, level", [("c7i", "amx"), ("m7i.2xlarge", "amx"), ("ml.c6i.xlarge", "vnni"),
                                         ("aws:c6a", "avx2"), ("c7a", "vnni+bf16"), ("azure:dv5", "vnni"),
                                         ("azure:Dasv5", "avx2"), ("gcp:c3", "amx"), ("gcp:n2d", "avx2")])
def test_families(name, level):
    assert hardware.resolve(name).level == level


def test_feature_list():
    hw = hardware.resolve(["avx2", "avx512_vnni", "avx512_bf16"])
    assert hw.vnni and hw.bf16 and not hw.amx and hw.level == "vnni+bf16"
    assert hardware.openvino_precisions(hardware.resolve(["avx2"])) == ["fp32"]


@pytest.mark.parametrize("bad, words", [("c99z", "not an instance family"), ("c7g", "ARM"), ("gcp:t2a", "ARM"),
                                        (["avx2", "sse9"], "sse9"), (["avx512_vnni"], "avx2")])
def test_unknown_values_are_bad_input(bad, words):
    with pytest.raises(BadInput, match=words):
        hardware.resolve(bad)
