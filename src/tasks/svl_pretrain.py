"""SVL pretraining: align a spiking 3D encoder with frozen CLIP towers (MTA), evaluate zero-shot, export Rep-VLI.

Wiring only (REFERENCE section 1); the pieces live in modules:

* the encoder: a model spec (:func:`spikelight.models.build_model`), e.g. ``{name: spike_pointnet, embed_dim: 128}``;
* the frozen towers (:class:`~spikelight.models.clip_towers.ClipTowers`): a frozen part declared with
  :meth:`~spikelight.tasks.base.SpikelightTask.declare_frozen` (built on first use, never in checkpoints,
  rebuilt from the hparams; random-weight towers are built under ``tower_seed``);
* projections and temperature: :class:`~spikelight.models.alignment.AlignmentHead` (``self.align``);
* the loss: stateless :class:`~spikelight.losses.MTALoss` (``self.mta``);
* zero-shot class weights and Rep-VLI weights: :class:`~spikelight.models.zero_shot.ZeroShotClassifier`
  (``self.zero_shot``), shared with ``spikelight export`` and :mod:`spikelight.deploy`.

One training step::

    points [B, N, F] --encoder (mean over T)--> x_raw [B, C]
    image [B, 3, H, W] / text list[str] --frozen towers--> image_feat, text_feat   (or the batch's *_feat)
    image_emb, text_emb, s = align(image_feat, text_feat);  loss = mta(x_raw, image_emb, text_emb, s)

Zero-shot evaluation (every ``zero_shot_every_n_epochs`` validation epochs, and every ``test``) scores each
evaluation set of ``datamodule.eval_sets()`` (:class:`~spikelight.datamodules.base.EvalSet`, aligned with
``val_dataloader()``): top-1/3/5 (where ``k <= K``) and class-mean accuracy, logged as ``val/*`` for the
first set and ``val_<name>/*`` for the others; rank 0 writes ``<run_dir>/zero_shot.json`` (``fit``) or
``zero_shot_<fn>.json``. Confusion matrices of every scored set are kept in ``self.confusion_matrices``
(drawn by :class:`spikelight.callbacks.ConfusionMatrixPlot`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from spikelight.losses import MTALoss
from spikelight.models import ModelConfig, build_model
from spikelight.models.alignment import AlignmentHead
from spikelight.models.zero_shot import DEFAULT_PROMPT_TEMPLATES, ZeroShotClassifier, ZeroShotScores
from spikelight.tasks.base import ConfusionResult, SpikelightTask

__all__ = ["SVLPretrain", "default_svl_adamw"]


def default_svl_adamw(params) -> torch.optim.Optimizer:
    """SVL's optimiser: AdamW(lr=2e-3, betas=(0.9, 0.98), weight_decay=1e-4)."""
    return torch.optim.AdamW(params, lr=2e-3, betas=(0.9, 0.98), weight_decay=1e-4)


def _encoder_spec(spec: ModelConfig, embed_dim: Optional[int], default_dim: int) -> tuple[dict, int]:
    """The encoder spec as a dict with ``embed_dim`` set (task value, else the spec's, else ``default_dim``)."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    args = dict(spec.get("init_args") or {}) if "class_path" in spec else spec
    dim = int(embed_dim if embed_dim is not None else args.get("embed_dim", default_dim))
    args["embed_dim"] = dim
    if "class_path" in spec:
        spec["init_args"] = args
    return spec, dim


class SVLPretrain(SpikelightTask):
    """SVL pretraining task (see the module docstring).

    Args:
        encoder: the 3D encoder's model spec (registered name, ``{name: ..., <kwargs>}`` or
            ``{class_path: ..., init_args: ...}``).
        embed_dim: ``C``; default: the spec's ``embed_dim``, else the CLIP image feature size.
        clip_model: open_clip model name of the frozen towers (``spikelight-tiny-clip`` for CPU runs).
        clip_pretrained: open_clip tag or local checkpoint file; ``None`` = random weights.
        text_model: ``None`` (the CLIP text tower), ``"minilm"`` or a local sentence-transformers folder.
        clip_image_dim, clip_text_dim: feature sizes of the towers (or of the batch's precomputed
            ``image_feat`` / ``text_feat``); default: read from the model configs.
        clip_cache_dir: open_clip download cache for tags.
        feature_cache: folder of the on-disk text feature cache; ``None``: in-memory only.
        tower_seed: RNG seed the towers are built under (random weights come back identical after a load);
            ``None``: the global RNG at first use (the behaviour before; random towers differ after a reload).
        lambda_text, lambda_image, lambda_mse, mse_on: :class:`~spikelight.losses.MTALoss`.
        init_temperature, max_logit_scale: :class:`~spikelight.models.alignment.AlignmentHead`.
        zero_shot_every_n_epochs: during ``fit``, score zero-shot when ``(epoch + 1) % n == 0`` and in the
            last epoch; other validation epochs only run the encoder on the first set (for energy callbacks).
        prompt_templates: zero-shot prompt templates (one ``{}``); default: each evaluation set's, else
            :data:`~spikelight.models.zero_shot.DEFAULT_PROMPT_TEMPLATES`.
        optimizer, kwargs (warmup_epochs, warmup_start_lr, min_lr, scheduler): see
            :class:`~spikelight.tasks.base.SpikelightTask`. Biases, norm parameters and the logit scale
            get no weight decay.
    """

    def __init__(
        self,
        *,
        encoder: ModelConfig = "spike_pointnet",
        embed_dim: Optional[int] = None,
        clip_model: str = "spikelight-tiny-clip",
        clip_pretrained: Optional[str] = None,
        text_model: Optional[str] = None,
        clip_image_dim: Optional[int] = None,
        clip_text_dim: Optional[int] = None,
        clip_cache_dir: Optional[str] = None,
        feature_cache: Optional[str] = None,
        tower_seed: Optional[int] = 0,
        lambda_text: float = 1.0,
        lambda_image: float = 1.0,
        lambda_mse: float = 1.0,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        mse_on: str = "raw",
        zero_shot_every_n_epochs: int = 1,
        prompt_templates: Optional[list[str]] = None,
        optimizer: OptimizerCallable = default_svl_adamw,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer=optimizer, **kwargs)
        if zero_shot_every_n_epochs < 1:
            raise ValueError(f"zero_shot_every_n_epochs must be >= 1, got {zero_shot_every_n_epochs}")
        self.save_hyperparameters(ignore=["optimizer"])
        teacher = {"clip_model": clip_model, "clip_pretrained": clip_pretrained, "text_model": text_model}
        self.declare_frozen("towers", self._build_towers, seed=tower_seed, describe=teacher)
        from spikelight.models.clip_towers import tower_feature_dims

        image_dim, text_dim = tower_feature_dims(clip_model, text_model)
        image_dim, text_dim = clip_image_dim or image_dim, clip_text_dim or text_dim
        if image_dim is None or text_dim is None:  # e.g. hf-hub: models: probe the built towers
            image_dim, text_dim = self.towers.image_dim, self.towers.text_dim
        self.image_dim, self.text_dim = int(image_dim), int(text_dim)
        self.encoder_spec, self.embed_dim = _encoder_spec(encoder, embed_dim, self.image_dim)
        self.encoder = build_model(self.encoder_spec)
        self.align = AlignmentHead(embed_dim=self.embed_dim, image_dim=self.image_dim, text_dim=self.text_dim,
                                   init_temperature=init_temperature, max_logit_scale=max_logit_scale)  # fmt: skip
        self.mta = MTALoss(lambda_text=lambda_text, lambda_image=lambda_image, lambda_mse=lambda_mse,
                           mse_on=mse_on)  # type: ignore[arg-type]  # fmt: skip
        self.zero_shot = ZeroShotClassifier(encode_text=self.encode_texts, align=self.align,
                                            templates=prompt_templates)  # fmt: skip
        self._heads: dict[str, Optional[list[ZeroShotScores]]] = {}  # stage -> heads (None: epoch not scored)

    # ================================================================== frozen towers
    def _build_towers(self) -> nn.Module:
        from spikelight.models.clip_towers import ClipTowers

        h = self.hparams
        towers = ClipTowers(model_name=h.clip_model, pretrained=h.clip_pretrained, text_model=h.text_model,
                            cache_dir=h.clip_cache_dir)  # fmt: skip
        for name, got, want in (("image", towers.image_dim, getattr(self, "image_dim", None)),
                                ("text", towers.text_dim, getattr(self, "text_dim", None))):  # fmt: skip
            if want is not None and got != want:
                raise ValueError(f"SVLPretrain: the {name} tower of {h.clip_model!r} gives {got}-d features "
                                 f"but the task was configured for {want}-d (clip_{name}_dim)")  # fmt: skip
        return towers

    @property
    def towers(self):
        """The frozen :class:`~spikelight.models.clip_towers.ClipTowers` (built on first use)."""
        return self.frozen("towers")

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Frozen text features ``[B, D_txt]`` (memo, then the on-disk ``feature_cache``, then the tower)."""
        if self.hparams.feature_cache is not None and not hasattr(self, "_fcache"):
            from spikelight.models.clip_towers import FeatureCache

            self._fcache = FeatureCache(self.hparams.feature_cache)
        return self.towers.encode_text_memo(texts, getattr(self, "_fcache", None)).to(self.device)

    def teacher_features(self, batch: dict) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """``(image_feat, text_feat)``: the batch's precomputed features, else the frozen towers' (``None``
        where the loss does not need them)."""
        image_feat, text_feat = batch.get("image_feat"), batch.get("text_feat")
        if image_feat is None and self.mta.needs_image:
            if batch.get("image") is None:
                raise ValueError("SVLPretrain: the batch has neither 'image' nor 'image_feat' (needed by MTA)")
            image_feat = self.towers.encode_image(batch["image"])
        if text_feat is None and self.mta.needs_text:
            if batch.get("text") is None:
                raise ValueError("SVLPretrain: the batch has neither 'text' nor 'text_feat' (needed by MTA)")
            text_feat = self.encode_texts(batch["text"])
        return image_feat, text_feat

    # ================================================================== training
    def forward(self, points: Tensor) -> Tensor:
        """3D embedding ``[B, C]`` (raw, time-averaged) of ``points [B, N, F]`` (or ``[T, B, N, F]``)."""
        out = self.encoder(points)
        return out.mean(0) if out.dim() == 3 else out

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        image_feat, text_feat = self.teacher_features(batch)
        out = self.mta(self(batch["points"]), *self.align(image_feat, text_feat))
        self.check_finite(out["loss"])
        bs = int(batch["points"].shape[0])
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=bs)
        for k in ("loss_text", "loss_image", "loss_mse", "logit_scale", "acc_text", "acc_image"):
            self.log(f"train/{k}", out[k].detach(), batch_size=bs)
        return out["loss"]

    def parameters_to_optimize(self) -> list[dict[str, Any]]:
        """Two groups: weights with decay; biases, norm parameters (1-d) and the logit scale without."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or name.endswith("logit_scale") else decay).append(p)
        return [{"params": decay}] + ([{"params": no_decay, "weight_decay": 0.0}] if no_decay else [])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict") or {}
        for key in [k for k in state if k.startswith("mta.")]:  # checkpoints from before AlignmentHead
            state["align." + key[4:]] = state.pop(key)

    # ================================================================== zero-shot evaluation
    def eval_sets(self, datamodule: Any = None) -> list:
        """The datamodule's :class:`~spikelight.datamodules.base.EvalSet` list (the typed contract)."""
        dm = datamodule if datamodule is not None else getattr(self._trainer, "datamodule", None)
        if dm is None or not callable(getattr(dm, "eval_sets", None)):
            raise ValueError(f"SVLPretrain zero-shot evaluation needs a datamodule with eval_sets(), got "
                             f"{type(dm).__name__}")  # fmt: skip
        return list(dm.eval_sets())

    def templates_for(self, eval_set: Any = None) -> list[str]:
        """Prompt templates: the task's, else the evaluation set's, else the defaults."""
        sets = getattr(eval_set, "prompt_templates", None)
        return list(self.hparams.prompt_templates or sets or DEFAULT_PROMPT_TEMPLATES)

    def _prepare_zero_shot(self, stage: str) -> list[ZeroShotScores]:
        heads = []
        for i, s in enumerate(self.eval_sets()):
            with torch.no_grad():
                weight = self.zero_shot.weights(s.class_names, self.templates_for(s)).float()
            prefix = stage if i == 0 else _set_prefix(stage, s.name)
            heads.append(ZeroShotScores.create(s.name, s.class_names, prefix, weight))
        self._heads[stage] = heads
        return heads

    def _zero_shot_due(self) -> bool:
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit" or trainer.sanity_checking:
            return True
        epoch, max_epochs = trainer.current_epoch, trainer.max_epochs
        last = max_epochs is not None and max_epochs > 0 and epoch + 1 >= max_epochs
        return last or (epoch + 1) % self.hparams.zero_shot_every_n_epochs == 0

    def _head(self, stage: str, dataloader_idx: int) -> ZeroShotScores:
        heads = self._heads.get(stage) or self._prepare_zero_shot(stage)
        if dataloader_idx >= len(heads):
            raise ValueError(f"SVLPretrain: {stage} dataloader {dataloader_idx} has no evaluation set: the "
                             f"datamodule's eval_sets() lists {len(heads)}")  # fmt: skip
        return heads[dataloader_idx]

    def infer(self, batch: dict, dataloader_idx: int = 0) -> Tensor:
        """Zero-shot logits ``[B, K]`` of ``batch["points"]`` against evaluation set ``dataloader_idx``."""
        stage = next((s for s in ("val", "test", "predict") if self._heads.get(s)), "val")
        return self.zero_shot.logits(self(batch["points"]), self._head(stage, dataloader_idx).weight)

    def _eval_step(self, stage: str, batch: dict, dataloader_idx: int) -> Optional[Tensor]:
        if self._heads.get(stage, ()) is None:  # not a zero-shot epoch: keep the forward for energy meters
            if dataloader_idx == 0:
                self(batch["points"])
            return None
        head = self._head(stage, dataloader_idx)
        logits = self.zero_shot.logits(self(batch["points"]), head.weight)
        head.update(logits, batch["label"])
        return logits

    def _eval_epoch_end(self, stage: str) -> None:
        summary: dict[str, Any] = {}
        trainer = self._trainer
        for i, head in enumerate(self._heads.get(stage) or []):
            count = torch.tensor(float(head.count), device=self.device)
            if trainer is not None and trainer.world_size > 1:
                count = trainer.strategy.reduce(count, reduce_op="sum")
            values = head.compute()
            for k, v in values.items():
                self.log(f"{head.prefix}/{k}", v, prog_bar=(k == "top1" and i == 0), add_dataloader_idx=False)
            self.confusion_matrices[head.name] = ConfusionResult(
                head.name, head.class_names, head.confmat.compute().cpu(), int(self.current_epoch))
            summary[head.name] = {"log_prefix": head.prefix, "num_classes": len(head.class_names),
                                  "chance": 1.0 / len(head.class_names), "samples": int(count.item()), **values}  # fmt: skip
        self._heads.pop(stage, None)
        if trainer is None or trainer.sanity_checking or not trainer.is_global_zero or not summary:
            return
        fn = str(getattr(trainer.state.fn, "value", trainer.state.fn) or stage)
        record = {"stage": stage, "trainer_fn": fn, "epoch": int(self.current_epoch),
                  "global_step": int(self.global_step), "sets": summary}  # fmt: skip
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        name = "zero_shot.json" if fn == "fit" else f"zero_shot_{fn}.json"
        tmp = run_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(run_dir / name)  # atomic: readers never see a half-written file

    def on_validation_epoch_start(self) -> None:
        self._heads["val"] = self._prepare_zero_shot("val") if self._zero_shot_due() else None

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> Optional[Tensor]:
        return self._eval_step("val", batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self._prepare_zero_shot("test")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> Optional[Tensor]:
        return self._eval_step("test", batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def on_predict_epoch_start(self) -> None:
        self._prepare_zero_shot("predict")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        head = self._head("predict", dataloader_idx)
        logits = self.zero_shot.logits(self(batch["points"]), head.weight)
        pred = logits.argmax(-1)
        return {"logits": logits, "pred": pred, "names": [head.class_names[int(i)] for i in pred],
                "label": batch.get("label")}  # fmt: skip

    # ================================================================== Rep-VLI export
    @torch.no_grad()
    def export_deploy(self, out_dir: str | Path, class_names: Optional[Sequence[str]] = None,
                      datamodule: Any = None, templates: Optional[Sequence[str]] = None) -> Path:  # fmt: skip
        """Write the Rep-VLI deploy model (:func:`spikelight.deploy.export_repvli`) for ``class_names``
        (default: the first evaluation set's) with ``templates`` (default: :meth:`templates_for`)."""
        from spikelight.deploy import export_repvli

        first = self.eval_sets(datamodule)[0] if class_names is None or templates is None else None
        class_names = list(class_names) if class_names is not None else list(first.class_names)
        templates = list(templates) if templates else self.templates_for(first)
        towers = self.towers
        text_tower = towers.text_encoder if towers.text_encoder is not None else towers.clip_text
        return export_repvli(out_dir, encoder=self.encoder, encoder_spec=self.encoder_spec,
                             zero_shot=self.zero_shot, class_names=class_names, templates=templates,
                             teacher=dict(self._frozen["towers"].describe),
                             full_model={"alignment_head": self.align, "text_tower": text_tower,
                                         "image_tower": towers.visual})  # fmt: skip


def _set_prefix(stage: str, name: str) -> str:
    """Log prefix of a non-first evaluation set: ``val`` + ``val_categories`` -> ``val_categories``,
    ``val`` + ``scanobjectnn`` -> ``val_scanobjectnn``, ``test`` + ``val_categories`` -> ``test_categories``."""
    for lead in ("val_", "test_"):
        if name.startswith(lead):
            name = name[len(lead) :]
            break
    return f"{stage}_{name}"
