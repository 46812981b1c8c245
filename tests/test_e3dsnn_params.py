"""E-3DSNN parameter counts against the published ones (see the docstring of spikelight.models.e3dsnn).

Models are built on the meta device: only shapes, no memory and no initialisation cost.
"""

from __future__ import annotations

import pytest
import torch

from spikelight.models import create_model

# counts the E-3DSNN authors print for their public code (ModelNet40 head: C = 40), two decimals in M
E3DSNN_CODE_C40 = {"e3dsnn_t": 1.87e6, "e3dsnn_s": 3.27e6, "e3dsnn_l": 17.33e6, "e3dsnn_h": 46.57e6}
# SVL paper (E-3DSNN encoders with SVL's 1280-wide head)
SVL_PAPER_C1280 = {"e3dsnn_l": 17.7e6, "e3dsnn_h": 46.7e6}
# what the authors' SVL code builds at C = 1280 (the documented counts)
DOCUMENTED_C1280 = {"e3dsnn_l": 17_649_280, "e3dsnn_h": 47_051_648}


def count(name: str, embed_dim: int) -> int:
    with torch.device("meta"):
        m = create_model(name, embed_dim=embed_dim)
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", sorted(E3DSNN_CODE_C40))
def test_counts_equal_the_authors_code_at_40_classes(name):
    n = count(name, 40)
    assert abs(n - E3DSNN_CODE_C40[name]) <= 0.005e6, (name, n)  # equal to the printed two decimals


@pytest.mark.parametrize("name", sorted(DOCUMENTED_C1280))
def test_l_and_h_at_svl_width(name):
    n = count(name, 1280)
    assert n == DOCUMENTED_C1280[name]
    ratio = n / SVL_PAPER_C1280[name]
    if name == "e3dsnn_l":
        assert abs(ratio - 1) < 0.003  # 17.65M vs 17.7M
    else:
        # documented difference: the paper's 46.7M is 0.75% below what the authors' code builds
        assert 1.007 < ratio < 1.008


def test_no_single_width_gives_both_paper_counts():
    """Head = (c4 + 1) C: the widths that round to the paper's L and H figures do not overlap."""
    base = {k: count(k, 1) - (c4 + 1) for k, c4 in (("e3dsnn_l", 256), ("e3dsnn_h", 384))}

    def widths(name, c4, target):
        lo, hi = target - 0.05e6, target + 0.05e6
        return {C for C in range(1, 4097) if lo <= base[name] + (c4 + 1) * C < hi}

    wl = widths("e3dsnn_l", 256, SVL_PAPER_C1280["e3dsnn_l"])
    wh = widths("e3dsnn_h", 384, SVL_PAPER_C1280["e3dsnn_h"])
    assert wl and wh and not wl & wh
    assert 1280 not in wh
