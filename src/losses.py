"""Losses: SVL's Multi-scale Triple Alignment (MTA) loss, with global-batch negatives under DDP.

MTA aligns a (spiking) 3D encoder with *frozen* CLIP image and text towers (REFERENCE section 1):

* ``x = normalise(pc_feat)``: the 3D embedding ``[B, C]`` (for ``T > 1`` the encoder has already
  averaged over time),
* ``y = normalise(proj_t(text_feat))`` and ``b = normalise(proj_i(image_feat))``: the CLIP text and
  image features ``[B, D_clip]`` through *trainable* linear projections ``D_clip -> C``, computed by
  the task's :class:`~spikelight.models.alignment.AlignmentHead` (which owns them and the temperature),
* ``L = l1 * NCE(x, y) + l2 * NCE(x, b) + l3 * MSE(x_raw, b)`` with ``l1 = l2 = l3 = 1``,
* ``NCE`` is CLIP's symmetric InfoNCE (mean of the 3D->other and other->3D cross entropies) with
  ONE logit scale ``s = 1 / temperature`` shared by both terms, passed in by the caller.

:class:`MTALoss` is stateless like open_clip's ``ClipLoss``: it holds the weights and options only and
takes ``(pc_feat, image_emb, text_emb, logit_scale)``.

MSE choice (documented decision): REFERENCE states ``MSE(x_raw, b)``; the default ``mse_on="raw"``
follows it literally: the *un-normalised* 3D embedding regresses the normalised, projected image
feature (``F.mse_loss``, i.e. the mean over batch *and* channels). Besides pulling the direction
it gives the raw embedding a unit-norm target, which keeps its scale in check (the InfoNCE terms
only see its direction). ``mse_on="normalized"`` uses ``MSE(x, b) = (2 - 2 cos(x, b)) / C`` instead.

Distributed training (DDP): features are all-gathered across ranks *with* gradients, so the
negatives are the global batch ``N = sum_r B_r``. With ``local_loss=True`` (default) each rank only
computes its own rows, ``logits = s * x_local @ y_all.T`` (``[B, N]``, and symmetrically
``s * y_local @ x_all.T``) with targets ``arange(B) + offset_r`` where ``offset_r = sum_{q<r} B_q``
(``rank * B`` for equal batches). With ``local_loss=False`` every rank computes the full ``N x N``
logits (same value on every rank, more compute).

Why no extra gradient scaling is needed: let ``L = mean_r L_r`` be the loss of the concatenated
batch (for equal ``B_r``; ``L_r`` is what rank ``r`` returns). The backward of the gathering
all-gather *sums* the gradients every rank sends for rank ``r``'s rows, so rank ``r``'s features
receive ``sum_q dL_q/dx_r = W * dL/dx_r`` (``W`` = world size; the local MSE term gives the same
``W * dL/dx_r``). Any replicated parameter ``theta`` then gets ``W * dL/dtheta`` summed over ranks'
rows, and DDP's gradient *average* (divide by ``W``) yields exactly ``dL/dtheta``: the DDP gradient
equals the single-process gradient on the concatenated batch (``tests/test_losses.py`` checks this
with two gloo processes). The logit scale is used locally on each rank (its gradient on rank ``r``
is ``dL_r/ds``), and averaging gives ``dL/ds`` as well. With ``local_loss=False`` ``L_r = L`` and
the same argument holds.

Tensor layouts: ``pc_feat [B, C]``, ``image_emb [B, C]``, ``text_emb [B, C]``, ``logit_scale`` 0-d;
outputs are 0-d tensors.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MTALoss", "contrastive_logits", "gather_features", "symmetric_infonce"]


def _dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_sizes(n: int, device: torch.device, world: int) -> list[int]:
    local = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]


class _AllGatherWithGrad(torch.autograd.Function):
    """``[n, D] -> [W * n, D]`` (rank order); backward sums every rank's gradient for our rows.

    Written with ``all_gather`` + ``all_reduce`` only, which every backend (gloo, NCCL) supports.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        rank, world = _dist_rank_world()
        ctx.rank, ctx.n = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_features(*feats: Tensor, enabled: bool = True) -> tuple[list[Tensor], int]:
    """All-gather ``[B_r, D]`` tensors across ranks, keeping the autograd graph.

    Returns ``(gathered, offset)``: ``gathered[i]`` is ``[N, D]`` (rank order, ``N = sum_r B_r``) and
    ``offset`` is where this rank's rows start (``rank * B`` for equal batch sizes). Unequal batch
    sizes are padded for the collective and cut back afterwards. Without an initialised process
    group (or ``enabled=False``, or world size 1) the inputs come back unchanged with offset 0.

    Backward: the gradient that reaches this rank's rows is the *sum* over ranks of the gradients
    of their losses w.r.t. those rows (an all-reduce of the gathered gradient, then our slice).
    """
    rank, world = _dist_rank_world()
    if not enabled or world == 1:
        return list(feats), 0
    n = feats[0].shape[0]
    sizes = _gather_sizes(n, feats[0].device, world)
    n_max = max(sizes)
    out = []
    for f in feats:
        if f.shape[0] != n:
            raise ValueError(
                f"gather_features: all features need the same batch size, got {f.shape[0]} vs {n}"
            )
        padded = F.pad(f, (0, 0, 0, n_max - n)) if n_max > n else f
        full = _AllGatherWithGrad.apply(padded)  # [W * n_max, D]
        out.append(torch.cat([full[r * n_max : r * n_max + s] for r, s in enumerate(sizes)], dim=0))
    return out, sum(sizes[:rank])


def contrastive_logits(q: Tensor, k: Tensor, logit_scale: Tensor) -> Tensor:
    """``logit_scale * q @ k.T`` for normalised ``q [B, C]`` and ``k [N, C]`` -> ``[B, N]``."""
    return logit_scale * q @ k.transpose(0, 1)


def symmetric_infonce(
    a_local: Tensor,
    b_local: Tensor,
    a_all: Tensor,
    b_all: Tensor,
    offset: int,
    logit_scale: Tensor,
    *,
    local_loss: bool = True,
) -> tuple[Tensor, Tensor]:
    """CLIP's symmetric InfoNCE between paired, L2-normalised embeddings.

    ``a_local, b_local [B, C]`` are this rank's rows (row ``i`` of ``a`` pairs with row ``i`` of
    ``b``); ``a_all, b_all [N, C]`` the gathered global batch in which this rank's rows start at
    ``offset``. Returns ``(loss, acc)``: the mean of the a->b and b->a cross entropies and the
    in-batch a->b retrieval accuracy (top-1 over the ``N`` candidates) of the rows scored here.
    """
    if local_loss:
        labels = torch.arange(a_local.shape[0], device=a_local.device) + offset
        logits_ab = contrastive_logits(a_local, b_all, logit_scale)  # [B, N]
        logits_ba = contrastive_logits(b_local, a_all, logit_scale)  # [B, N]
    else:
        labels = torch.arange(a_all.shape[0], device=a_all.device)
        logits_ab = contrastive_logits(a_all, b_all, logit_scale)  # [N, N]
        logits_ba = logits_ab.transpose(0, 1)
    loss = 0.5 * (F.cross_entropy(logits_ab, labels) + F.cross_entropy(logits_ba, labels))
    with torch.no_grad():
        acc = (logits_ab.argmax(dim=-1) == labels).float().mean()
    return loss, acc


class MTALoss(nn.Module):
    """SVL's Multi-scale Triple Alignment loss, stateless like open_clip's ``ClipLoss``.

    Holds only the weights and options; the projections and the logit scale belong to the caller's
    :class:`~spikelight.models.alignment.AlignmentHead`, whose outputs are this loss's inputs.

    Args:
        lambda_text, lambda_image, lambda_mse: ``l1, l2, l3``. Every term whose input is given is
            computed (and reported); its weight decides what enters ``loss``, so a zero weight
            reproduces REFERENCE's ablations. An embedding may be ``None`` only when all weights of
            its terms are 0.
        mse_on: ``"raw"`` (default, REFERENCE's ``MSE(x_raw, b)``) or ``"normalized"`` (``MSE(x, b)``).
        gather: all-gather features across ranks when a process group is initialised.
        local_loss: score only this rank's rows against the global batch (``[B, N]`` logits)
            instead of the full ``[N, N]`` matrix on every rank; same gradients, less compute.
    """

    def __init__(
        self,
        *,
        lambda_text: float = 1.0,
        lambda_image: float = 1.0,
        lambda_mse: float = 1.0,
        mse_on: Literal["raw", "normalized"] = "raw",
        gather: bool = True,
        local_loss: bool = True,
    ) -> None:
        super().__init__()
        if mse_on not in ("raw", "normalized"):
            raise ValueError(f"MTALoss: mse_on must be 'raw' or 'normalized', got {mse_on!r}")
        self.lambda_text = float(lambda_text)
        self.lambda_image = float(lambda_image)
        self.lambda_mse = float(lambda_mse)
        self.mse_on = mse_on
        self.gather = gather
        self.local_loss = local_loss

    @property
    def needs_image(self) -> bool:
        return self.lambda_image != 0.0 or self.lambda_mse != 0.0

    @property
    def needs_text(self) -> bool:
        return self.lambda_text != 0.0

    def forward(
        self,
        pc_feat: Tensor,
        image_emb: Tensor | None,
        text_emb: Tensor | None,
        logit_scale: Tensor,
    ) -> dict[str, Tensor]:
        """Compute MTA on this rank's batch.

        Args:
            pc_feat: ``[B, C]`` raw 3D embedding (not normalised).
            image_emb: ``[B, C]`` projected, L2-normalised image features ``b`` (``None`` allowed when
                ``lambda_image == lambda_mse == 0``).
            text_emb: ``[B, C]`` projected, L2-normalised text features ``y`` (``None`` allowed when
                ``lambda_text == 0``).
            logit_scale: 0-d ``1 / temperature`` (differentiable).

        Under DDP every rank must call this with the same set of non-``None`` features (the
        gathers are collectives).

        Returns:
            dict of 0-d tensors: ``loss`` (weighted total, differentiable), ``loss_text``,
            ``loss_image``, ``loss_mse`` (unweighted terms, differentiable; 0 when the feature is
            ``None``), ``logit_scale`` (detached), ``acc_text`` / ``acc_image`` (in-batch top-1
            3D->text / 3D->image retrieval accuracy over the global batch, detached).
        """
        if pc_feat.ndim != 2:
            raise ValueError(f"MTALoss: pc_feat must be [B, C], got {tuple(pc_feat.shape)}")
        bsz, dim = pc_feat.shape
        use_text, use_image = text_emb is not None, image_emb is not None
        if not use_text and self.needs_text:
            raise ValueError("MTALoss: text_emb is None but lambda_text != 0")
        if not use_image and self.needs_image:
            raise ValueError("MTALoss: image_emb is None but lambda_image or lambda_mse != 0")
        for name, f in (("image_emb", image_emb), ("text_emb", text_emb)):
            if f is not None and tuple(f.shape) != (bsz, dim):
                raise ValueError(f"MTALoss: {name} is {tuple(f.shape)}, pc_feat (batch, C) is {(bsz, dim)}")

        pc_feat = pc_feat.to(logit_scale.dtype)  # the loss runs in the scale's dtype (fp32)
        zero = pc_feat.new_zeros(())
        x = F.normalize(pc_feat, dim=-1)
        local = [t for t in (x, text_emb, image_emb) if t is not None]
        gathered, offset = gather_features(*local, enabled=self.gather)
        x_all = gathered.pop(0)
        y_all = gathered.pop(0) if use_text else None
        b_all = gathered.pop(0) if use_image else None

        out: dict[str, Tensor] = {
            "loss_text": zero, "acc_text": zero.detach(), "loss_image": zero, "acc_image": zero.detach(),
            "loss_mse": zero,
        }  # fmt: skip
        loss = zero
        if use_text:
            out["loss_text"], out["acc_text"] = symmetric_infonce(
                x, text_emb, x_all, y_all, offset, logit_scale, local_loss=self.local_loss
            )
            loss = loss + self.lambda_text * out["loss_text"]
        if use_image:
            out["loss_image"], out["acc_image"] = symmetric_infonce(
                x, image_emb, x_all, b_all, offset, logit_scale, local_loss=self.local_loss
            )
            source = pc_feat if self.mse_on == "raw" else x
            out["loss_mse"] = F.mse_loss(source, image_emb)
            loss = loss + self.lambda_image * out["loss_image"] + self.lambda_mse * out["loss_mse"]
        out["loss"] = loss
        out["logit_scale"] = logit_scale.detach()
        return out

    def extra_repr(self) -> str:
        return (
            f"lambdas=({self.lambda_text}, {self.lambda_image}, {self.lambda_mse}), mse_on={self.mse_on!r}, "
            f"local_loss={self.local_loss}"
        )


# ---------------------------------------------------------------------------------------------
# T-RevSNN: weighted sum of the per-timestep heads' cross-entropies
# ---------------------------------------------------------------------------------------------

__all__ = [*__all__, "loss_weights", "trevsnn_loss"]


def loss_weights(T: int, weights: tuple[float, ...] | list[float] = (0.25, 0.5, 0.75, 2.0)) -> list[float]:
    """Per-head loss weights for ``T`` heads.

    ``len(weights) == T``: used as given. Otherwise the last weight goes to the final head and
    the aux heads take the first ``T - 1`` aux weights ``weights[:-1]``, continued as an
    arithmetic progression (last step) when more are needed. The default gives ``[2.0]`` for
    T=1, ``[0.25, 2.0]`` for T=2, ``[0.25, 0.5, 2.0]`` for T=3, the paper's
    ``[0.25, 0.5, 0.75, 2.0]`` for T=4 and ``[0.25, 0.5, 0.75, 1.0, 1.25, 2.0]`` for T=6.
    """
    w = [float(x) for x in weights]
    if T < 1 or not w:
        raise ValueError(f"need T >= 1 and at least one weight, got T={T}, weights={weights}")
    if len(w) == T:
        return w
    aux, final = w[:-1], w[-1]
    if not aux:
        aux = [final]
    step = aux[-1] - aux[-2] if len(aux) > 1 else 0.0
    while len(aux) < T - 1:
        aux.append(aux[-1] + step)
    return aux[: T - 1] + [final]


def trevsnn_loss(
    logits: Tensor | list[Tensor] | tuple[Tensor, ...],
    target: Tensor,
    weights: tuple[float, ...] | list[float] = (0.25, 0.5, 0.75, 2.0),
    label_smoothing: float = 0.0,
) -> Tensor:
    """``sum_t w_t * CE(logits[t], target)`` over the ``T`` heads of T-RevSNN (weights: :func:`loss_weights`).

    Args:
        logits: ``[T, B, K]`` tensor or a list of ``T`` ``[B, K]``; a single ``[B, K]`` tensor
            gives the plain (unweighted) cross-entropy.
        target: ``[B]`` class indices (or ``[B, K]`` probabilities).
    """
    if isinstance(logits, Tensor) and logits.dim() == 2:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    w = loss_weights(len(logits), weights)
    total = logits[0].new_zeros(())
    for wt, lg in zip(w, logits):
        total = total + wt * F.cross_entropy(lg, target, label_smoothing=label_smoothing)
    return total


# ============================================================================ answer-only LM loss (LVC)
__all__ = [*__all__, "answer_lm_loss", "answer_positions"]


def answer_positions(labels: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """Where a causal LM's logits are needed for an answer-only loss, and their targets.

    ``labels [B, L]`` holds the answer tokens at their positions and ``ignore_index`` elsewhere (prompt,
    visual placeholders, padding). The logits at position ``i`` predict token ``i + 1``, so the needed
    positions are ``keep[b, i] = labels[b, i + 1] != ignore_index`` (bool ``[B, L]``, usable as
    ``transformers``' ``logits_to_keep``, which then returns only ``[N, V]`` logits) and the targets are
    those labels in row-major order (``[N]``)."""
    nxt = labels[:, 1:]
    valid = nxt != ignore_index
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = valid
    return keep, nxt[valid]


def answer_lm_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean next-token cross-entropy over the answer tokens only (float32 logits).

    ``logits``: ``[B, L, V]`` for every position (shifted here, as ``transformers`` does with
    ``labels=``), or ``[N, V]`` already restricted to :func:`answer_positions` ``keep``. Equals the
    ``transformers`` causal-LM loss with the same ``labels`` (``-100`` = ignored)."""
    if logits.dim() == 3:
        keep, targets = answer_positions(labels, ignore_index)
        logits = logits[keep]
    else:
        targets = answer_positions(labels, ignore_index)[1]
    if logits.shape[0] != targets.shape[0]:
        raise ValueError(f"answer_lm_loss: {logits.shape[0]} logit rows for {targets.shape[0]} answer tokens")
    if targets.numel() == 0:
        raise ValueError("answer_lm_loss: no answer token in the batch (every label is ignore_index)")
    return F.cross_entropy(logits.float(), targets)
