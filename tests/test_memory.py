"""fcnseg.memory: freed large blocks are reused, not faulted in afresh (glibc, Linux)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

# A child allocates, fills and frees a 256 MB tensor twice (as training steps do), then the
# minor page faults of a third (65,536 pages of 4 KB when they are fresh; glibc may still
# return the first block once).
CHILD = """
import json, resource, sys, torch
from fcnseg.memory import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
n = 64 << 20
torch.ones(n).sum()
torch.ones(n).sum()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(n)
print(json.dumps({"took": took, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0,
                  "again": keep_freed_memory() if took is not None else None}))
"""


def _child(mode: str, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def _glibc() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").gnu_get_libc_version  # noqa: B018
        return True
    except (OSError, AttributeError):
        return False


@pytest.mark.skipif(not _glibc(), reason="glibc's malloc")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    fresh = _child("default")
    kept = _child("keep")
    assert fresh["faults"] > 30_000, fresh  # glibc's default: a fresh mmap, every page faulted
    assert kept["took"] is True and kept["again"] is True, kept
    assert kept["faults"] < 2_000, kept  # the freed block served the new tensor


def test_system_setting_leaves_malloc_alone():
    r = _child("keep", FCNSEG_MALLOC="system")
    assert r["took"] is False
    assert r["faults"] > 30_000 or not _glibc(), r


def test_command_line_keeps_freed_memory():
    code = (
        "import sys; from fcnseg import memory; from fcnseg.cli import main; "
        "main(['models']); print(memory._done)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.strip().splitlines()[-1] == str(_glibc())
