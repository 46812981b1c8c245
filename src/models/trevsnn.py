"""T-RevSNN: temporal reversible spiking network (O(L) training memory, O(1) inference).

Reads top to bottom like the paper (REFERENCE.md section 2).

Layout
------
* Images: ``x [B, C_in, H, W]`` (``C_in = 3``). The stem runs **once**; its output
  ``x0 [B, C_0, H/4, W/4]`` enters level 0 at every timestep.
* DVS (``dvs=True``): ``x [B, T_in, P, H, W]`` event-frame stacks (``P = 2`` polarities),
  ``T_in`` divisible by ``T``. Frames are chunked into ``T`` groups of ``F = T_in / T``,
  group ``t`` is flattened to channels ``(f p)`` (frame-major) and goes through its **own** stem
  (one stem per timestep); ``x0[t]`` enters level 0 at timestep ``t``. ``in_chans = P * F``.
* Output: training ``[T, B, K]`` logits (one head per timestep); eval ``[B, K]`` (last head only).
  ``forward(x, all_heads=True/False)`` overrides the default.

Forward (timesteps ``t = 1..T``, levels ``l = 0..3`` at strides 4, 8, 16, 16)
------------------------------------------------------------------------------
::

    c0[t] = a0*c0[t-1] + L0(x0, c1[t-1])          c_l[0] = 0
    c1[t] = a1*c1[t-1] + L1(c0[t], c2[t-1])
    c2[t] = a2*c2[t-1] + L2(c1[t], c3[t-1])
    c3[t] = a3*c3[t-1] + L3(c2[t])
    L_l(u, v) = Blocks_l(Down_l(u) + Up_l(v))

* ``a_l`` learnable per-channel leak (one per level, shared by all timesteps), init 0.5, used as
  :func:`clamp_leak` ``(a_l)``: ``|a| >= 1e-3`` with the sign kept (gradient 1 where unclamped,
  0 where clamped).
* ``Down_l(u) = BN(conv(S(u)))``: 3x3 stride 2 into levels 1, 2; 1x1 stride 1 into level 3.
  Into level 0 the stem already delivers ``C_0`` channels at stride 4, so by default
  ``Down_0`` is the identity (``down0="identity"``, as RevCol's level 0): the real-valued stem
  output ``x0`` is the level's membrane input and is **not** spiked there; the first block spikes
  ``S(x0 + Up_0(v))`` before any conv, so every conv after the stem is still spike-fed (the
  shortcut carries the real membrane). This choice reproduces the paper's parameter counts
  (15.2M tiny / 29.8M small); ``down0="conv1x1"``/``"conv3x3"`` gives ``BN(conv(S(x0)))``.
* ``Up_l(v) = upsample_nearest(BN(conv1x1(S(v))))`` to level ``l``'s size (x2 into levels 0, 1;
  none into level 2 since levels 2 and 3 share a resolution). At ``t = 1`` the top-down input is
  the zero initial state, so the first timestep's sub-network has **no** ``Up`` modules (as
  RevCol's first column): the top-down term is exactly 0.
* ``S`` = :class:`~spikelight.nn.neurons.BinarySpike` (fires at ``u >= 0.5``, straight-through
  gradient on ``[0, 1]``). Only the four level outputs carry state; every other neuron is
  stateless.
* Block (``depth = 2`` per level per timestep), ConvNeXt-like with a membrane shortcut::

      s = S(u);  h = pw1(dw1(s))  (C -> 4C);  h = S(h);  o = dw2(pw2(h))  (4C -> C)
      out = u + drop_path(g * o)

  weight-standardised convs (:class:`timm.layers.ScaledStdConv2d`), no norm inside, kernel 5,
  ``g`` per-channel layer scale (init ``layer_scale_init = 1e-6`` as ConvNeXt/RevCol, so every
  block starts as the identity on its membrane input). The **last** block's ``pw2``/``dw2`` of
  each level are *shared across timesteps*: they are registered once in ``model.shared[l]``
  and the blocks keep plain (unregistered) references to the same module objects, so the
  state dict has no duplicate keys and ``parameters()`` lists them once.
* Stem (real-valued, once): ``conv7x7 s2 (C_in -> C_0/2) -> BN -> S -> conv3x3 s2 -> BN``. The
  spike between the two convs keeps the second conv addition-only.
* Heads, one per timestep: aux heads (``t < T``) ``avgpool(c3[t]) -> BN1d -> Linear`` on the
  real-valued state; final head ``avgpool(S(c3[T])) -> BN1d -> Linear`` on spikes. The loss is
  :func:`spikelight.losses.trevsnn_loss`.

Reversible backward (``mode="reversible"``): a custom autograd Function
(:mod:`spikelight.models.trevsnn_reversible`, where the details are) runs all timesteps without
keeping activations, saves only the stem output(s) and the final states, and in backward walks
``t = T..1`` recomputing each level and rebuilding the previous state by inverting the leak,
``c_l[t-1] = (c_l[t] - L_l(...)) / a_l``, so activation memory does not grow with ``T``.
``mode="bptt"`` runs the same loop with ordinary autograd (every activation of every timestep
is kept). Without grad (eval, ``torch.no_grad``) both modes run the plain loop, keeping only the
current states (O(1) in T).

Registered variants (``spikelight.models.create_model(name, **kw)``); parameter counts with T=4,
1000 classes (:meth:`TRevSNN.param_count`), final head only / with the three aux heads:

============= ================== ======================================
name          channels           params
============= ================== ======================================
trevsnn_tiny  64/128/256/384     15.205M / 16.362M (paper: 15.2M)
trevsnn_small 96/192/384/512     29.755M / 31.297M (paper: 29.8M)
trevsnn_test  8/16/16/32         tiny, for CPU tests
============= ================== ======================================

The paper's "one head" count matches the inference model (aux heads dropped). The DVS variant
is any of them with ``dvs=True`` (and ``in_chans`` = frames per timestep x polarities).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, ScaledStdConv2d, trunc_normal_
from torch import nn

from spikelight.models.registry import register_model
from spikelight.models.trevsnn_reversible import ReversibleTime, get_rng
from spikelight.nn.neurons import BinarySpike

__all__ = [
    "LEAK_MIN",
    "Block",
    "Level",
    "StateRecord",
    "TRevSNN",
    "clamp_leak",
    "trevsnn_small",
    "trevsnn_test",
    "trevsnn_tiny",
]

LEAK_MIN = 1e-3


# ---------------------------------------------------------------------------------------------
# small pieces
# ---------------------------------------------------------------------------------------------


def clamp_leak(a: torch.Tensor, eps: float = LEAK_MIN) -> torch.Tensor:
    """Keep ``|a| >= eps`` with the sign kept (``0`` maps to ``+eps``).

    Differentiable where valid: gradient 1 where ``|a| >= eps``, 0 where clamped.
    """
    floor = torch.where(a >= 0, torch.full_like(a, eps), torch.full_like(a, -eps))
    return torch.where(a.abs() >= eps, a, floor)


def _conv_ws(cin: int, cout: int, k: int, *, groups: int = 1) -> ScaledStdConv2d:
    return ScaledStdConv2d(cin, cout, k, stride=1, padding=k // 2, groups=groups, bias=True)


class Stem(nn.Module):
    """Real-valued stem, once per image: ``[B, C_in, H, W] -> [B, C_0, H/4, W/4]``."""

    def __init__(self, *, in_chans: int, dim: int) -> None:
        super().__init__()
        mid = max(dim // 2, 1)
        self.conv1 = nn.Conv2d(in_chans, mid, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.spike = BinarySpike()
        self.conv2 = nn.Conv2d(mid, dim, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.spike(self.bn1(self.conv1(x)))))


class Down(nn.Module):
    """``BN(conv(S(u)))``: ``[B, C_in, H, W] -> [B, C_out, H/stride, W/stride]``."""

    def __init__(self, *, cin: int, cout: int, kernel_size: int, stride: int, spike: bool = True) -> None:
        super().__init__()
        self.spike = BinarySpike() if spike else nn.Identity()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.spike(u)))


class Up(nn.Module):
    """``upsample_nearest(BN(conv1x1(S(v))), size)``: ``[B, C_in, h, w] -> [B, C_out, *size]``."""

    def __init__(self, *, cin: int, cout: int) -> None:
        super().__init__()
        self.spike = BinarySpike()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, v: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        h = self.bn(self.conv(self.spike(v)))
        if tuple(h.shape[-2:]) != tuple(size):
            h = F.interpolate(h, size=tuple(size), mode="nearest")
        return h


class Block(nn.Module):
    """Spiking ConvNeXt-like block with a membrane shortcut. ``[B, C, H, W] -> same``.

    ``s = S(u); h = S(pw1(dw1(s))); o = dw2(pw2(h)); out = u + drop_path(g * o)``.

    Args:
        shared: optional ``ModuleDict`` with ``pw2``/``dw2`` to use instead of own ones; kept as
            plain attributes (not registered here; the owner registers them once).
    """

    def __init__(
        self,
        *,
        dim: int,
        kernel_size: int = 5,
        expansion: int = 4,
        layer_scale_init: float = 1e-6,
        drop_path: float = 0.0,
        shared: nn.ModuleDict | None = None,
    ) -> None:
        super().__init__()
        self.spike1 = BinarySpike()
        self.dw1 = _conv_ws(dim, dim, kernel_size, groups=dim)
        self.pw1 = _conv_ws(dim, expansion * dim, 1)
        self.spike2 = BinarySpike()
        if shared is None:
            self.pw2 = _conv_ws(expansion * dim, dim, 1)
            self.dw2 = _conv_ws(dim, dim, kernel_size, groups=dim)
            self.is_shared = False
        else:
            object.__setattr__(self, "pw2", shared["pw2"])
            object.__setattr__(self, "dw2", shared["dw2"])
            self.is_shared = True
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        h = self.spike2(self.pw1(self.dw1(self.spike1(u))))
        o = self.dw2(self.pw2(h))
        return u + self.drop_path(self.gamma.view(1, -1, 1, 1) * o)

    def extra_repr(self) -> str:
        return f"shared_pw2_dw2={self.is_shared}"


class Level(nn.Module):
    """One level of one timestep's sub-network: ``L(u, v) = Blocks(Down(u) + Up(v))``.

    ``u``: the level below at this timestep (or the stem output); ``v``: the level above at the
    previous timestep, or ``None`` (no top-down term). Output ``[B, C_l, H_l, W_l]``.
    """

    def __init__(self, *, down: nn.Module, up: Up | None, blocks: Sequence[Block]) -> None:
        super().__init__()
        self.down = down
        self.up = up
        self.blocks = nn.ModuleList(blocks)

    def forward(self, u: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
        h = self.down(u)
        if v is not None and self.up is not None:
            h = h + self.up(v, h.shape[-2:])
        for blk in self.blocks:
            h = blk(h)
        return h

    def grad_params(self) -> list[nn.Parameter]:
        """Parameters this level uses (own + the shared pw2/dw2) that require grad, no duplicates."""
        seen: dict[int, nn.Parameter] = {id(p): p for p in self.parameters() if p.requires_grad}
        for blk in self.blocks:
            if blk.is_shared:
                for p in (*blk.pw2.parameters(), *blk.dw2.parameters()):
                    if p.requires_grad:
                        seen.setdefault(id(p), p)
        return list(seen.values())

    def batchnorms(self) -> list[nn.modules.batchnorm._BatchNorm]:
        return [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class Head(nn.Module):
    """``[B, C, H, W] -> [B, K]``: (spike) -> global average pool -> BN1d -> Linear."""

    def __init__(self, *, dim: int, num_classes: int, spike: bool, drop: float = 0.0) -> None:
        super().__init__()
        self.spike = BinarySpike() if spike else nn.Identity()
        self.norm = nn.BatchNorm1d(dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.norm(self.spike(c).mean(dim=(-2, -1)))))


@dataclass
class StateRecord:
    """Debug record of states (time index 1-based, ``(t, l) -> c_l[t]`` detached clones).

    ``forward``: states computed by the forward for ``t = 1..T``; ``reconstructed``: states
    rebuilt by the reversible backward for ``t = 1..T-1`` (``c_l[0] = 0`` is known, not rebuilt).
    """

    forward: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    reconstructed: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)



# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------


class TRevSNN(nn.Module):
    """Temporal reversible SNN (see the module docstring for equations and layouts).

    Build the paper's sizes by name (``create_model("trevsnn_tiny", ...)``, see the module docstring).

    Args:
        channels: level widths ``(C_0, C_1, C_2, C_3)`` (default: tiny's).
        num_classes: classes per head.
        timesteps: ``T`` (number of sub-networks / heads).
        kernel_size: depthwise kernel of the blocks.
        in_chans: stem input channels; default 3 (images) or 2 (``dvs``, one frame per group).
        mode: ``"reversible"`` (custom backward, memory flat in T) or ``"bptt"``.
        dvs: event-frame input ``[B, T_in, P, H, W]`` with one stem per timestep.
        depth: blocks per level per timestep (the last one's pw2/dw2 are shared across time).
        layer_scale_init: initial block layer scale ``g``.
        leak_init: initial leak ``a_l``.
        drop_path_rate: stochastic depth, linear over the ``4 * depth`` blocks of a sub-network.
        head_drop: dropout before the head linears.
        down0: ``Down_0`` applied to the stem output: ``"identity"`` (default, as RevCol's level 0;
            matches the paper's parameter counts) or ``"conv1x1"``/``"conv3x3"`` for
            ``BN(conv(S(x0)))`` at stride 1.

    Shape: ``[B, C_in, H, W]`` (or ``[B, T_in, P, H, W]`` for DVS) -> ``[T, B, K]`` in training,
    ``[B, K]`` in eval (override with ``all_heads``).
    """

    def __init__(
        self,
        *,
        channels: Sequence[int] = (64, 128, 256, 384),
        num_classes: int = 1000,
        timesteps: int = 4,
        kernel_size: int = 5,
        in_chans: int | None = None,
        mode: str = "reversible",
        dvs: bool = False,
        depth: int = 2,
        layer_scale_init: float = 1e-6,
        leak_init: float = 0.5,
        drop_path_rate: float = 0.0,
        head_drop: float = 0.0,
        down0: str = "identity",
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 4 or min(channels) < 1:
            raise ValueError(f"channels must be 4 positive ints, got {channels}")
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if down0 not in ("identity", "conv1x1", "conv3x3"):
            raise ValueError(f"down0 must be 'identity', 'conv1x1' or 'conv3x3', got {down0!r}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.channels, self.num_classes, self.timesteps = channels, int(num_classes), int(timesteps)
        self.mode = mode  # validated by the property setter
        self.dvs = bool(dvs)
        self.in_chans = int(in_chans) if in_chans is not None else (2 if dvs else 3)
        C = channels
        T = self.timesteps

        n_stems = T if self.dvs else 1
        self.stems = nn.ModuleList([Stem(in_chans=self.in_chans, dim=C[0]) for _ in range(n_stems)])

        # shared pw2/dw2 of the last block of every level (registered only here)
        self.shared = nn.ModuleList(
            [
                nn.ModuleDict({"pw2": _conv_ws(4 * c, c, 1), "dw2": _conv_ws(c, c, kernel_size, groups=c)})
                for c in C
            ]
        )
        dpr = (
            torch.linspace(0, drop_path_rate, 4 * depth).tolist() if drop_path_rate > 0 else [0.0] * 4 * depth
        )

        columns = []
        for t in range(T):
            levels = []
            for lvl in range(4):
                if lvl == 0:
                    down = (
                        Down(cin=C[0], cout=C[0], kernel_size=int(down0[-1]), stride=1)
                        if down0 != "identity"
                        else nn.Identity()
                    )
                elif lvl == 3:
                    down = Down(cin=C[2], cout=C[3], kernel_size=1, stride=1)
                else:
                    down = Down(cin=C[lvl - 1], cout=C[lvl], kernel_size=3, stride=2)
                up = Up(cin=C[lvl + 1], cout=C[lvl]) if (t > 0 and lvl < 3) else None
                blocks = [
                    Block(
                        dim=C[lvl],
                        kernel_size=kernel_size,
                        layer_scale_init=layer_scale_init,
                        drop_path=dpr[lvl * depth + i],
                        shared=self.shared[lvl] if i == depth - 1 else None,
                    )
                    for i in range(depth)
                ]
                levels.append(Level(down=down, up=up, blocks=blocks))
            columns.append(nn.Module())
            columns[-1].levels = nn.ModuleList(levels)
        self.columns = nn.ModuleList(columns)
        self.leaks = nn.ParameterList([nn.Parameter(torch.full((c,), float(leak_init))) for c in C])
        self.heads = nn.ModuleList(
            [Head(dim=C[3], num_classes=num_classes, spike=(t == T - 1), drop=head_drop) for t in range(T)]
        )
        self._recorder: StateRecord | None = None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    # ----- configuration ---------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in ("reversible", "bptt"):
            raise ValueError(f"mode must be 'reversible' or 'bptt', got {value!r}")
        self._mode = value

    def param_count(self, *, aux_heads: bool = True) -> int:
        """Number of parameters; ``aux_heads=False`` counts only the final head (inference model)."""
        n = sum(p.numel() for p in self.parameters())
        if not aux_heads:
            n -= sum(p.numel() for h in self.heads[:-1] for p in h.parameters())
        return n

    @contextlib.contextmanager
    def record_states(self) -> Iterator[StateRecord]:
        """Debug: record forward states and the states the reversible backward rebuilds."""
        rec = StateRecord()
        self._recorder = rec
        try:
            yield rec
        finally:
            self._recorder = None

    # ----- building blocks of the recurrence ---------------------------------------------------

    def _leak(self, lvl: int) -> torch.Tensor:
        return clamp_leak(self.leaks[lvl]).view(1, -1, 1, 1)

    def _leak_update(self, lvl: int, c_prev: torch.Tensor | None, L: torch.Tensor) -> torch.Tensor:
        """``c_l[t] = a_l * c_l[t-1] + L`` (``c_prev=None`` means the zero initial state)."""
        L = L.to(self.leaks[lvl].dtype)
        return L if c_prev is None else self._leak(lvl) * c_prev + L

    def _leak_invert(self, lvl: int, c: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
        """``c_l[t-1] = (c_l[t] - L) / a_l``."""
        return (c - L.to(c.dtype)) / self._leak(lvl)

    def _stochastic(self) -> bool:
        if not self.training:
            return False
        for m in self.columns.modules():
            if isinstance(m, DropPath) and m.drop_prob > 0:
                return True
            if isinstance(m, nn.Dropout) and m.p > 0:
                return True
        return False

    def _rev_params(self) -> list[nn.Parameter]:
        """Parameters of the recurrent part (the reversible Function's inputs), deduplicated."""
        ps: dict[int, nn.Parameter] = {}
        for mod in (self.columns, self.shared, self.leaks):
            for p in mod.parameters():
                if p.requires_grad:
                    ps.setdefault(id(p), p)
        return list(ps.values())

    def _run(
        self,
        xs: Sequence[torch.Tensor],
        *,
        rng: dict | None = None,
        keep_all: bool = True,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The recurrence over ``T`` timesteps. Returns (final states ``c0..c3[T]``, ``c3[t]`` list).

        ``keep_all=False`` keeps only ``c3[T]`` in the list (O(1) memory in T without grad).
        """
        states: list[torch.Tensor | None] = [None] * 4
        outs: list[torch.Tensor] = []
        rec = self._recorder
        for t in range(self.timesteps):
            x_t = xs[t if len(xs) > 1 else 0]
            for lvl in range(4):
                u = x_t if lvl == 0 else states[lvl - 1]
                v = states[lvl + 1] if lvl < 3 else None
                if rng is not None:
                    rng[(t, lvl)] = get_rng(x_t.device)
                L = self.columns[t].levels[lvl](u, v)
                states[lvl] = self._leak_update(lvl, states[lvl], L)
                if rec is not None:
                    rec.forward[(t + 1, lvl)] = states[lvl].detach().clone()
            if keep_all or t == self.timesteps - 1:
                outs.append(states[3])
        return states, outs  # type: ignore[return-value]

    # ----- forward ------------------------------------------------------------------------------

    def stem_forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem output(s): one ``[B, C_0, H/4, W/4]`` (images) or ``T`` of them (DVS)."""
        if self.dvs:
            if x.dim() != 5:
                raise ValueError(f"TRevSNN(dvs=True) expects [B, T_in, P, H, W], got shape {tuple(x.shape)}")
            T_in = x.shape[1]
            if T_in % self.timesteps != 0:
                raise ValueError(
                    f"TRevSNN(dvs=True): T_in={T_in} frames cannot be chunked into timesteps={self.timesteps}"
                )
            groups = rearrange(x, "b (t f) p h w -> t b (f p) h w", t=self.timesteps)
            if groups.shape[2] != self.in_chans:
                raise ValueError(
                    f"TRevSNN(dvs=True): a group has {groups.shape[2]} channels (frames*polarities) "
                    f"but in_chans={self.in_chans}; input shape {tuple(x.shape)}"
                )
            return [stem(g) for stem, g in zip(self.stems, groups)]
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"TRevSNN expects [B, {self.in_chans}, H, W], got shape {tuple(x.shape)}")
        return [self.stems[0](x)]

    def forward_features(self, x: torch.Tensor, *, keep_all: bool = True) -> list[torch.Tensor]:
        """Top-level states ``c3[t]`` (``[B, C_3, H/16, W/16]`` each), ``t = 1..T`` (or only ``T``)."""
        xs = self.stem_forward(x)
        params = self._rev_params() if torch.is_grad_enabled() else []
        needs_grad = torch.is_grad_enabled() and (bool(params) or any(x_.requires_grad for x_ in xs))
        if self.mode == "reversible" and needs_grad:
            outs = list(ReversibleTime.apply(self, len(xs), *xs, *params))
            return outs if keep_all else outs[-1:]
        _, outs = self._run(xs, keep_all=keep_all or torch.is_grad_enabled())
        return outs if keep_all else outs[-1:]

    def forward(self, x: torch.Tensor, *, all_heads: bool | None = None) -> torch.Tensor:
        """Logits ``[T, B, K]`` (all heads; default in training) or ``[B, K]`` (last head; eval)."""
        if all_heads is None:
            all_heads = self.training
        feats = self.forward_features(x, keep_all=all_heads)
        if not all_heads:
            return self.heads[-1](feats[-1])
        return torch.stack([head(f) for head, f in zip(self.heads, feats)])


# ---------------------------------------------------------------------------------------------
# registered variants (the loss is spikelight.losses.trevsnn_loss)
# ---------------------------------------------------------------------------------------------


@register_model
def trevsnn_tiny(**kwargs) -> TRevSNN:
    """T-RevSNN tiny (64/128/256/384), ~15.2M params at T=4 with the final head."""
    return TRevSNN(**{"channels": (64, 128, 256, 384), **kwargs})


@register_model
def trevsnn_small(**kwargs) -> TRevSNN:
    """T-RevSNN small (96/192/384/512), ~29.8M params at T=4 with the final head."""
    return TRevSNN(**{"channels": (96, 192, 384, 512), **kwargs})


@register_model
def trevsnn_test(**kwargs) -> TRevSNN:
    """Tiny CPU test model (8/16/16/32)."""
    return TRevSNN(**{"channels": (8, 16, 16, 32), **kwargs})
