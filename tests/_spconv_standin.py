"""A stand-in for ``spconv.pytorch`` (spconv 2.x is not installed on CPU CI): the sparse-conv backend
glue and the energy meter's spconv rule are tested against it.

Like spconv's CUDA kernels, the stand-in's convolution runs outside PyTorch's dispatcher (``no_dispatch``:
no TorchDispatchMode sees its ops), and like spconv it returns strided outputs in its own site order.
"""

from __future__ import annotations

import sys
import types

import torch
from torch.utils._mode_utils import no_dispatch

from spikelight.nn.sparse_conv import SparseTensor, build_kernel_map, sparse_conv_reference

CALLS = {"forward": 0}


class FakeSpconvTensor:
    def __init__(self, features, indices, spatial_shape, batch_size):
        assert indices.dtype == torch.int32 and features.dim() == 2
        self.features, self.indices = features, indices
        self.spatial_shape, self.batch_size = list(spatial_shape), batch_size


class FakeSparseConv3d(torch.nn.Module):
    """KRSC weight; strided outputs in a scrambled site order (spconv makes no ordering promise)."""

    subm = False

    def __init__(self, c_in, c_out, kernel_size, bias=False, stride=1, padding=0):
        super().__init__()
        k = tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) else (kernel_size,) * 3
        self.weight = torch.nn.Parameter(torch.zeros(c_out, *k, c_in))
        self.k, self.stride, self.padding = k, stride, padding

    def forward(self, t):
        CALLS["forward"] += 1
        x = SparseTensor(t.features, t.indices.long(), t.spatial_shape, t.batch_size)
        with no_dispatch():  # an external kernel: invisible to dispatch modes (e.g. the energy meter)
            geometry = dict(kernel_size=self.k, stride=self.stride, padding=self.padding, subm=self.subm)
            km = build_kernel_map(x.indices, x.spatial_shape, x.batch_size, **geometry)
            f = sparse_conv_reference(x, self.weight, km)
        idx = km.out_indices
        if not self.subm:
            perm = torch.randperm(idx.shape[0], generator=torch.Generator().manual_seed(0))
            f, idx = f[perm], idx[perm]
        return FakeSpconvTensor(f, idx.int(), km.out_spatial_shape, t.batch_size)


class FakeSubMConv3d(FakeSparseConv3d):
    subm = True


# what a spconv module reports as its home (the energy meter refuses modules of the spconv package)
FakeSparseConv3d.__module__ = FakeSubMConv3d.__module__ = "spconv.pytorch.conv"


def install(monkeypatch) -> types.ModuleType:
    """Make ``import spconv.pytorch`` return the stand-in for the rest of the test."""
    fake = types.ModuleType("spconv.pytorch")
    fake.SparseConvTensor, fake.SubMConv3d, fake.SparseConv3d = (
        FakeSpconvTensor,
        FakeSubMConv3d,
        FakeSparseConv3d,
    )
    pkg = types.ModuleType("spconv")
    pkg.pytorch = fake
    monkeypatch.setitem(sys.modules, "spconv", pkg)
    monkeypatch.setitem(sys.modules, "spconv.pytorch", fake)
    return fake
