"""The benches' peak RSS probe (benchmarks/own_rss.py) reports askbuild's own memory, not its
parent's, which Linux folds into a child's ``ru_maxrss`` at the (v)fork."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in (str(ROOT),) if p not in sys.path]

from benchmarks.own_rss import peak_rss_mb  # noqa: E402

#: what the probed code allocates and touches, and what its parent and child hold
HELD_MB = 200


def _holding(mb: int) -> bytearray:
    block = bytearray(mb << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1                    # (touched: resident)
    return block


def test_a_big_parent_is_not_counted():
    """The probe's parent holds 200 MB: the probed code, which allocates nothing, reports a
    Python's own few MB (``ru_maxrss`` in the same child says at least the parent's)."""
    held = _holding(HELD_MB)
    small = peak_rss_mb(["-c", "pass"])
    folded = int(subprocess.run(
        [sys.executable, "-c", "import resource; "
         "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
        capture_output=True, text=True, check=True).stdout) / 1024
    assert len(held) == HELD_MB << 20
    assert small < 60, small
    assert folded >= HELD_MB, folded        # (what the probe must not report)


def test_what_the_probed_code_holds_is_counted():
    code = (f"block = bytearray({HELD_MB} << 20)\n"
            "for i in range(0, len(block), 4096): block[i] = 1\n")
    mb = peak_rss_mb(["-c", code])
    assert HELD_MB <= mb < HELD_MB + 60, mb


def test_a_failing_run_is_said():
    with pytest.raises(SystemExit, match=r"failed \(3\)"):
        peak_rss_mb(["-c", "raise SystemExit(3)"])
