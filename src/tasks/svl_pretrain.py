"""SVL pretraining: align a spiking 3D encoder with frozen CLIP towers (MTA), evaluate zero-shot, export Rep-VLI.

Flow of one training step (REFERENCE section 1)::

    batch["points"] [B, N, F] --encoder (spiking, T steps, mean over T)--> x_raw [B, C]
    batch["image"]  [B, 3, H, W] --frozen CLIP image tower--> image_feat [B, D_img]   (or batch["image_feat"])
    batch["text"]   list[str]    --frozen text tower (cached)--> text_feat [B, D_txt]  (or batch["text_feat"])
    MTALoss(x_raw, image_feat, text_feat): l1 NCE(3D, text) + l2 NCE(3D, image) + l3 MSE(3D, image)

Zero-shot evaluation (every ``zero_shot_every_n_epochs`` validation epochs, and every ``test``): at the
start of the epoch, for each evaluation set of the datamodule (``datamodule.val_sets``: list of
``{name, class_names}`` aligned with ``val_dataloader()``) the class matrix is built::

    t_k = mean_m normalise(text_tower(template_m.format(name_k)))     [K, D_txt]  (frozen: computed once)
    w_k = normalise(proj_text(t_k))                                   [K, C]      (trained projection)
    logits = logit_scale * normalise(encoder(points)) @ W.T           [B, K]

and scored with torchmetrics (top-1/3/5 where ``k <= K``, class-mean accuracy = ``MulticlassAccuracy``
``average="macro"``), synced across ranks. Logged as ``val/top1``, ``val/top3``, ``val/top5``,
``val/mean_class_acc`` for the first set and ``val_<name>/...`` for the others (``test`` likewise).
Rank 0 also writes ``<run_dir>/zero_shot.json`` (the latest numbers of every set during ``fit``;
``zero_shot_validate.json`` / ``zero_shot_test.json`` for the other commands) and, at the end of
``fit``, ``<run_dir>/confusion_<first set>.png``.

Rep-VLI (:meth:`SVLPretrain.export_deploy`): ``W_deploy = logit_scale * W`` for the requested class
names; the deployed model is the encoder plus one ``K x C`` linear layer (:mod:`spikelight.deploy`).
Because ``normalise(x)`` only rescales each row by a positive factor, ``argmax(W_deploy x)`` equals the
zero-shot prediction above, with no text tower, projections or temperature left.

The frozen towers (:class:`~spikelight.models.clip_towers.ClipTowers`) are built lazily on first use
and are *not* submodules: they are not in ``state_dict`` / checkpoints (rebuilt from the config), not
wrapped by DDP, not counted by the energy meter, and nothing is built (or downloaded) when a config is
merely instantiated. Their feature sizes are read from the open_clip / Hugging Face config files, or
given as ``clip_image_dim`` / ``clip_text_dim``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from spikelight.losses import MTALoss
from spikelight.models.encoders_3d import build_encoder
from spikelight.tasks.base import SpikelightTask

__all__ = ["SVLPretrain", "default_svl_adamw", "DEFAULT_PROMPT_TEMPLATES"]

#: used when neither the task nor the datamodule gives prompt templates
DEFAULT_PROMPT_TEMPLATES: list[str] = [
    "a point cloud model of {}.",
    "a 3D model of the {}.",
    "a point cloud of the {}.",
    "a rendering of the {}.",
]


def default_svl_adamw(params) -> torch.optim.Optimizer:
    """SVL's optimiser: AdamW(lr=2e-3, betas=(0.9, 0.98), weight_decay=1e-4)."""
    return torch.optim.AdamW(params, lr=2e-3, betas=(0.9, 0.98), weight_decay=1e-4)


def _clip_config_dims(model_name: str) -> Optional[int]:
    """``embed_dim`` of an open_clip architecture from its JSON config (no model is built)."""
    import open_clip

    from spikelight.models.clip_towers import _BUILTIN_CONFIGS, register_tiny_clip

    if model_name in _BUILTIN_CONFIGS:
        register_tiny_clip(model_name)
    cfg = open_clip.get_model_config(model_name)
    if cfg and isinstance(cfg.get("embed_dim"), int):
        return int(cfg["embed_dim"])
    return None


def _text_model_dim(text_model: str) -> Optional[int]:
    """Hidden size of a local sentence-transformers / HF text model (read from its config.json)."""
    from spikelight.models.clip_towers import resolve_text_model

    cfg = json.loads((resolve_text_model(text_model) / "config.json").read_text())
    dim = cfg.get("hidden_size") or cfg.get("d_model") or cfg.get("dim")
    return int(dim) if dim else None


class SVLPretrain(SpikelightTask):
    """SVL pretraining task (see the module docstring).

    Args:
        encoder: registered 3D encoder name (:func:`spikelight.models.encoders_3d.build_encoder`).
        encoder_kwargs: keyword arguments of the encoder variant (widths, ``timesteps`` ...).
        embed_dim: ``C``; default ``encoder_kwargs["embed_dim"]``, else the CLIP image feature size.
        clip_model: open_clip model name of the frozen towers (``spikelight-tiny-clip`` for CPU runs).
        clip_pretrained: open_clip tag or local checkpoint file; ``None`` = random weights.
        text_model: ``None`` (the CLIP text tower), ``"minilm"`` or a local sentence-transformers folder.
        clip_image_dim, clip_text_dim: feature sizes of the towers (or of the batch's precomputed
            ``image_feat`` / ``text_feat``); default: read from the model configs.
        clip_cache_dir: open_clip download cache for tags.
        feature_cache: folder of the on-disk text feature cache (captions and class prompts;
            :class:`~spikelight.models.clip_towers.FeatureCache`); ``None``: in-memory only.
        lambda_text, lambda_image, lambda_mse, init_temperature, mse_on, max_logit_scale: see
            :class:`~spikelight.losses.MTALoss`.
        zero_shot_every_n_epochs: during ``fit``, score zero-shot when ``(epoch + 1) % n == 0`` and in
            the last epoch; other validation epochs only run the encoder on the first set (for the
            energy callback) and log no ``val/*`` keys, so with a ``ModelCheckpoint`` monitoring
            ``val/top1`` keep ``n = 1`` (or thin out validation with ``trainer.check_val_every_n_epoch``).
        prompt_templates: zero-shot prompt templates (one ``{}``); default: the datamodule's.
        confusion_matrix: write ``confusion_<first set>.png`` into the run dir at the end of ``fit``.
        optimizer, warmup_epochs, warmup_start_lr, min_lr, scheduler: see
            :class:`~spikelight.tasks.base.SpikelightTask`. Biases, norm parameters and the
            logit scale get no weight decay.
    """

    def __init__(
        self,
        *,
        encoder: str = "spike_pointnet",
        encoder_kwargs: Optional[dict] = None,
        embed_dim: Optional[int] = None,
        clip_model: str = "spikelight-tiny-clip",
        clip_pretrained: Optional[str] = None,
        text_model: Optional[str] = None,
        clip_image_dim: Optional[int] = None,
        clip_text_dim: Optional[int] = None,
        clip_cache_dir: Optional[str] = None,
        feature_cache: Optional[str] = None,
        lambda_text: float = 1.0,
        lambda_image: float = 1.0,
        lambda_mse: float = 1.0,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        mse_on: str = "raw",
        zero_shot_every_n_epochs: int = 1,
        prompt_templates: Optional[list[str]] = None,
        confusion_matrix: bool = True,
        optimizer: OptimizerCallable = default_svl_adamw,
        warmup_epochs: float = 0.0,
        warmup_start_lr: float = 0.0,
        min_lr: float = 0.0,
        scheduler: str = "cosine",
    ) -> None:
        super().__init__(
            optimizer=optimizer,
            warmup_epochs=warmup_epochs,
            warmup_start_lr=warmup_start_lr,
            min_lr=min_lr,
            scheduler=scheduler,
        )
        if zero_shot_every_n_epochs < 1:
            raise ValueError(f"zero_shot_every_n_epochs must be >= 1, got {zero_shot_every_n_epochs}")
        self.save_hyperparameters(ignore=["optimizer"])
        encoder_kwargs = dict(encoder_kwargs or {})
        self._tower_box: list = []  # the frozen towers, outside the module tree (see the module docstring)

        # feature sizes of the frozen towers, without building them
        image_dim = clip_image_dim or _clip_config_dims(clip_model)
        if clip_text_dim is not None:
            text_dim = clip_text_dim
        elif text_model is not None:
            text_dim = _text_model_dim(text_model)
        else:
            text_dim = image_dim
        if image_dim is None or text_dim is None:  # e.g. hf-hub: models: probe the built towers
            towers = self.towers
            image_dim, text_dim = towers.image_dim, towers.text_dim
        self.image_dim, self.text_dim = int(image_dim), int(text_dim)

        if embed_dim is None:
            embed_dim = encoder_kwargs.get("embed_dim", self.image_dim)
        encoder_kwargs["embed_dim"] = int(embed_dim)
        self.embed_dim = int(embed_dim)
        self.encoder_name = encoder
        self.encoder_kwargs = encoder_kwargs
        self.encoder = build_encoder(encoder, **encoder_kwargs)
        self.mta = MTALoss(
            embed_dim=self.embed_dim,
            image_dim=self.image_dim,
            text_dim=self.text_dim,
            lambda_text=lambda_text,
            lambda_image=lambda_image,
            lambda_mse=lambda_mse,
            init_temperature=init_temperature,
            max_logit_scale=max_logit_scale,
            mse_on=mse_on,  # type: ignore[arg-type]
        )
        self.zero_shot_every_n_epochs = int(zero_shot_every_n_epochs)
        # runtime state (not in state_dict): text caches, zero-shot heads and metrics
        self._caption_feats: dict[str, Tensor] = {}
        self._class_feats: dict[tuple, Tensor] = {}
        self._zs: dict[str, Any] = {}
        self._last_confusion: Optional[tuple[str, list[str], Tensor, int]] = None

    # ================================================================== frozen towers
    @property
    def towers(self):
        """The frozen :class:`ClipTowers` (built on first use, kept on the module's device)."""
        if not self._tower_box:
            from spikelight.models.clip_towers import ClipTowers

            h = self.hparams
            rank_zero_info(
                f"SVLPretrain: building frozen towers {h.clip_model} (text: {h.text_model or 'clip'})"
            )
            towers = ClipTowers(
                model_name=h.clip_model,
                pretrained=h.clip_pretrained,
                text_model=h.text_model,
                cache_dir=h.clip_cache_dir,
            )
            for name, got, want in (
                ("image", towers.image_dim, getattr(self, "image_dim", None)),
                ("text", towers.text_dim, getattr(self, "text_dim", None)),
            ):
                if want is not None and got != want:
                    raise ValueError(
                        f"SVLPretrain: the {name} tower of {h.clip_model!r} gives {got}-d features but the "
                        f"task was configured for {want}-d (clip_{name}_dim)"
                    )
            self._tower_box.append(towers)
        towers = self._tower_box[0]
        if towers.device != self.device:
            towers.to(self.device)
        return towers

    def _feature_cache(self):
        if self.hparams.feature_cache is None:
            return None
        if not hasattr(self, "_fcache"):
            from spikelight.models.clip_towers import FeatureCache

            self._fcache = FeatureCache(self.hparams.feature_cache)
        return self._fcache

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Frozen text features ``[B, D_txt]`` of ``texts`` (memory cache, then the disk cache, then the tower)."""
        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._caption_feats))
        if missing:
            cache = self._feature_cache()
            towers = self.towers
            feats = (
                towers.encode_text_cached(missing, cache)
                if cache is not None
                else towers.encode_text(missing)
            )
            if len(self._caption_feats) + len(missing) > 200_000:
                self._caption_feats.clear()
            for t, f in zip(missing, feats.detach().float().cpu()):
                self._caption_feats[t] = f
        return torch.stack([self._caption_feats[t] for t in texts]).to(self.device)

    # ================================================================== zero-shot heads
    def class_text_features(self, class_names: Sequence[str], templates: Sequence[str]) -> Tensor:
        """Template-averaged frozen text features ``[K, D_txt]``: ``mean_m normalise(text(t_m(name_k)))``."""
        key = (tuple(class_names), tuple(templates))
        if key not in self._class_feats:
            if not class_names or not templates:
                raise ValueError("class_text_features needs at least one class name and one template")
            prompts = [t.format(n) for n in class_names for t in templates]
            feats = self.encode_texts(prompts).view(len(class_names), len(templates), -1)
            self._class_feats[key] = F.normalize(feats.float(), dim=-1).mean(dim=1).cpu()
        return self._class_feats[key].to(self.device)

    def class_weights(self, class_names: Sequence[str], templates: Optional[Sequence[str]] = None) -> Tensor:
        """Zero-shot class matrix ``W [K, C]``: ``normalise(proj_text(template-averaged text features))``."""
        templates = list(templates) if templates else self.resolve_templates()
        return self.mta.project_text(self.class_text_features(class_names, templates))

    @torch.no_grad()
    def deploy_weights(self, class_names: Sequence[str], templates: Optional[Sequence[str]] = None) -> Tensor:
        """Rep-VLI head ``logit_scale * W`` ``[K, C]`` (float32, detached)."""
        return (self.mta.scale * self.class_weights(class_names, templates)).float().detach()

    def resolve_templates(self, datamodule: Any = None) -> list[str]:
        if self.hparams.prompt_templates:
            return list(self.hparams.prompt_templates)
        dm = datamodule if datamodule is not None else self._datamodule()
        templates = getattr(dm, "prompt_templates", None) if dm is not None else None
        return list(templates) if templates else list(DEFAULT_PROMPT_TEMPLATES)

    def _datamodule(self) -> Any:
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    @staticmethod
    def eval_sets_of(datamodule: Any) -> list[dict[str, Any]]:
        """``[{name, class_names}]`` of a datamodule's evaluation sets (``val_sets``, else ``class_names``)."""
        if datamodule is None:
            raise ValueError(
                "SVLPretrain zero-shot evaluation needs a datamodule with val_sets or class_names"
            )
        sets = getattr(datamodule, "val_sets", None)
        if sets:
            return [{"name": str(s["name"]), "class_names": list(s["class_names"])} for s in sets]
        names = getattr(datamodule, "class_names", None)
        if names:
            return [{"name": "val", "class_names": list(names)}]
        raise ValueError(f"{type(datamodule).__name__} exposes neither val_sets nor class_names")

    def _prepare_zero_shot(self, stage: str) -> None:
        """Build each set's class matrix and fresh metrics (called at the start of a val/test epoch)."""
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

        dm = self._datamodule()
        sets = self.eval_sets_of(dm)
        templates = self.resolve_templates(dm)
        heads = []
        for i, s in enumerate(sets):
            names = s["class_names"]
            K = len(names)
            metrics: dict[str, nn.Module] = {
                f"top{k}": MulticlassAccuracy(num_classes=K, top_k=k, average="micro")
                for k in (1, 3, 5)
                if k <= K
            }
            metrics["mean_class_acc"] = MulticlassAccuracy(num_classes=K, average="macro")
            confmat = None
            if i == 0 and self.hparams.confusion_matrix:
                confmat = MulticlassConfusionMatrix(num_classes=K).to(self.device)
            with torch.no_grad():
                weight = self.class_weights(names, templates).float()
            prefix = stage if i == 0 else _set_prefix(stage, s["name"])
            heads.append({
                "name": s["name"], "class_names": names, "prefix": prefix, "weight": weight,
                "metrics": MetricCollection(metrics).to(self.device), "confmat": confmat, "count": 0,
            })  # fmt: skip
        self._zs[stage] = {"heads": heads, "templates": templates}

    def _zero_shot_due(self) -> bool:
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit" or trainer.sanity_checking:
            return True
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch + 1 >= trainer.max_epochs
        return last or (epoch + 1) % self.zero_shot_every_n_epochs == 0

    # ================================================================== forward / inference
    def forward(self, points: Tensor) -> Tensor:
        """3D embedding ``[B, C]`` (raw, time-averaged) of ``points [B, N, F]`` (or ``[T, B, N, F]``)."""
        out = self.encoder(points)
        return out.mean(0) if out.dim() == 3 else out

    def zero_shot_logits(self, points: Tensor, weight: Tensor) -> Tensor:
        """``logit_scale * normalise(encoder(points)) @ weight.T`` -> ``[B, K]`` (``weight`` normalised ``[K, C]``)."""
        x = F.normalize(self(points).float(), dim=-1)
        return self.mta.scale.detach().float() * x @ weight.t()

    def _head(self, stage: str, dataloader_idx: int) -> dict[str, Any]:
        if not self._zs.get(stage, {}).get("heads"):
            self._prepare_zero_shot(stage)
        heads = self._zs[stage]["heads"]
        if dataloader_idx >= len(heads):
            raise ValueError(
                f"SVLPretrain: {stage} dataloader {dataloader_idx} has no class names: the datamodule's "
                f"val_sets lists {len(heads)} set(s)"
            )
        return heads[dataloader_idx]

    def infer(self, batch: dict, dataloader_idx: int = 0) -> Tensor:
        """Zero-shot logits ``[B, K]`` of ``batch["points"]`` against evaluation set ``dataloader_idx``."""
        stage = next((s for s in ("val", "test", "predict") if self._zs.get(s, {}).get("heads")), "val")
        return self.zero_shot_logits(batch["points"], self._head(stage, dataloader_idx)["weight"])

    # ================================================================== training
    def parameters_to_optimize(self) -> list[dict[str, Any]]:
        """Two groups: weights with decay; biases, norm parameters (1-d) and the logit scale without."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if p.ndim < 2 or name.endswith("logit_scale"):
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [{"params": decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups

    def teacher_features(self, batch: dict) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """``(image_feat, text_feat)``: the batch's precomputed features, else the frozen towers' (``None``
        where the loss does not need them)."""
        need_image = self.mta.lambda_image != 0.0 or self.mta.lambda_mse != 0.0
        need_text = self.mta.lambda_text != 0.0
        image_feat = batch.get("image_feat")
        text_feat = batch.get("text_feat")
        if image_feat is None and need_image:
            if batch.get("image") is None:
                raise ValueError(
                    "SVLPretrain: the batch has neither 'image' nor 'image_feat' (needed by MTA)"
                )
            image_feat = self.towers.encode_image(batch["image"])
        if text_feat is None and need_text:
            if batch.get("text") is None:
                raise ValueError("SVLPretrain: the batch has neither 'text' nor 'text_feat' (needed by MTA)")
            text_feat = self.encode_texts(batch["text"])
        return image_feat, text_feat

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        image_feat, text_feat = self.teacher_features(batch)
        pc = self(batch["points"])
        out = self.mta(pc, image_feat=image_feat, text_feat=text_feat)
        loss = out["loss"]
        self.check_finite(loss)
        bs = int(batch["points"].shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for k in ("loss_text", "loss_image", "loss_mse", "logit_scale", "acc_text", "acc_image"):
            self.log(f"train/{k}", out[k].detach(), batch_size=bs)
        return loss

    # ================================================================== validation / test
    def _eval_epoch_start(self, stage: str) -> None:
        self._zs.pop(stage, None)
        if stage == "val" and not self._zero_shot_due():
            self._zs["val"] = {"heads": [], "skip": True}
            return
        self._prepare_zero_shot(stage)

    def _eval_step(self, stage: str, batch: dict, dataloader_idx: int) -> Optional[Tensor]:
        if self._zs.get(stage, {}).get("skip"):
            if dataloader_idx == 0:  # keep the encoder forward so energy callbacks measure real work
                self(batch["points"])
            return None
        head = self._head(stage, dataloader_idx)
        logits = self.zero_shot_logits(batch["points"], head["weight"])
        labels = batch["label"].to(logits.device)
        valid = labels >= 0
        if not bool(valid.all()):
            logits, labels = logits[valid], labels[valid]
        head["metrics"].update(logits, labels)
        head["count"] += int(labels.numel())
        if head["confmat"] is not None:
            head["confmat"].update(logits.argmax(-1), labels)
        return logits

    def _eval_epoch_end(self, stage: str) -> None:
        state = self._zs.get(stage)
        if not state or state.get("skip"):
            return
        summary: dict[str, Any] = {}
        trainer = self._trainer
        for head in state["heads"]:
            count = torch.tensor(float(head["count"]), device=self.device)
            if trainer is not None and trainer.world_size > 1:
                count = trainer.strategy.reduce(count, reduce_op="sum")
            values = {k: float(v) for k, v in head["metrics"].compute().items()}
            head["metrics"].reset()
            for k, v in values.items():
                self.log(f"{head['prefix']}/{k}", v, prog_bar=(k == "top1" and head is state["heads"][0]),
                         add_dataloader_idx=False, sync_dist=False)  # fmt: skip
            summary[head["name"]] = {
                "log_prefix": head["prefix"], "num_classes": len(head["class_names"]),
                "chance": 1.0 / len(head["class_names"]), "samples": int(count.item()), **values,
            }  # fmt: skip
            if head["confmat"] is not None:
                cm = head["confmat"].compute().cpu()
                head["confmat"].reset()
                self._last_confusion = (head["name"], head["class_names"], cm, int(self.current_epoch))
        if trainer is not None and not trainer.sanity_checking and trainer.is_global_zero and summary:
            run_dir = Path(trainer.default_root_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            fn = str(getattr(trainer.state.fn, "value", trainer.state.fn) or stage)
            record = {"stage": stage, "trainer_fn": fn, "epoch": int(self.current_epoch),
                      "global_step": int(self.global_step), "sets": summary}  # fmt: skip
            name = "zero_shot.json" if fn == "fit" else f"zero_shot_{fn}.json"
            tmp = run_dir / f".{name}.tmp"
            tmp.write_text(json.dumps(record, indent=1))
            tmp.replace(run_dir / name)  # atomic: readers never see a half-written file

    def on_validation_epoch_start(self) -> None:
        self._eval_epoch_start("val")

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> Optional[Tensor]:
        return self._eval_step("val", batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_epoch_start("test")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> Optional[Tensor]:
        return self._eval_step("test", batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def on_predict_epoch_start(self) -> None:
        self._prepare_zero_shot("predict")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        head = self._head("predict", dataloader_idx)
        logits = self.zero_shot_logits(batch["points"], head["weight"])
        pred = logits.argmax(-1)
        return {"logits": logits, "pred": pred, "names": [head["class_names"][int(i)] for i in pred],
                "label": batch.get("label")}  # fmt: skip

    # ================================================================== end of fit: confusion plot
    def on_fit_end(self) -> None:
        trainer = self._trainer
        if trainer is None or not trainer.is_global_zero or self._last_confusion is None:
            return
        name, names, cm, epoch = self._last_confusion
        path = Path(trainer.default_root_dir) / f"confusion_{name}.png"
        save_confusion_png(cm, names, path, title=f"zero-shot confusion: {name} (epoch {epoch})")
        rank_zero_info(f"SVLPretrain: wrote {path}")
        for logger in trainer.loggers:
            log_image = getattr(logger, "log_image", None)
            if log_image is not None:
                try:
                    log_image(key=f"plots/confusion_{name}", images=[str(path)])
                except Exception:  # noqa: BLE001 - a plot upload must never fail the run
                    pass

    # ================================================================== Rep-VLI export
    @torch.no_grad()
    def export_deploy(
        self,
        out_dir: str | Path,
        class_names: Optional[Sequence[str]] = None,
        datamodule: Any = None,
        templates: Optional[Sequence[str]] = None,
    ) -> Path:
        """Write the Rep-VLI deploy model (encoder + ``K x C`` head) to ``out_dir``; returns ``out_dir``.

        ``class_names`` default to the datamodule's first evaluation set; ``templates`` to the task's /
        datamodule's prompt templates.
        """
        from spikelight.deploy import save_deploy

        dm = datamodule if datamodule is not None else self._datamodule()
        if class_names is None:
            class_names = self.eval_sets_of(dm)[0]["class_names"]
        class_names = list(class_names)
        templates = list(templates) if templates else self.resolve_templates(dm)
        was_training = self.training
        self.eval()
        weight = self.deploy_weights(class_names, templates).cpu()
        towers = self.towers
        n_text = sum(p.numel() for m in (towers.text_encoder, towers.clip_text) if m is not None
                     for p in m.parameters())  # fmt: skip
        n_image = sum(p.numel() for p in towers.visual.parameters())
        n_enc = sum(p.numel() for p in self.encoder.parameters())
        n_proj = sum(p.numel() for p in self.mta.parameters())
        h = self.hparams
        path = save_deploy(
            out_dir,
            encoder=self.encoder,
            encoder_name=self.encoder_name,
            encoder_kwargs=self.encoder_kwargs,
            weight=weight,
            class_names=class_names,
            extra={
                "logit_scale": float(self.mta.scale),
                "templates": templates,
                "teacher": {
                    "clip_model": h.clip_model,
                    "clip_pretrained": h.clip_pretrained,
                    "text_model": h.text_model,
                },  # fmt: skip
                "full_model_parameters": {
                    "encoder": n_enc,
                    "mta_projections_and_scale": n_proj,
                    "text_tower": n_text,
                    "image_tower": n_image,
                    "zero_shot_inference": n_enc + n_proj + n_text,
                    "training": n_enc + n_proj + n_text + n_image,
                },  # fmt: skip
            },
        )
        self.train(was_training)
        return path


def _set_prefix(stage: str, name: str) -> str:
    """Log prefix of a non-first evaluation set: ``val`` + ``val_categories`` -> ``val_categories``,
    ``val`` + ``scanobjectnn`` -> ``val_scanobjectnn``, ``test`` + ``val_categories`` -> ``test_categories``."""
    for lead in ("val_", "test_"):
        if name.startswith(lead):
            name = name[len(lead) :]
            break
    return f"{stage}_{name}"


def save_confusion_png(cm: Tensor, class_names: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """Row-normalised confusion matrix ``cm [K, K]`` (rows = true class) as a PNG (matplotlib, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = cm.float()
    rows = cm.sum(dim=1, keepdim=True).clamp_min(1)
    norm = (cm / rows).numpy()
    K = len(class_names)
    size = max(4.0, 0.32 * K + 2.0)
    fig = Figure(figsize=(size + 1.0, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues")
    ax.set_xticks(range(K))
    ax.set_yticks(range(K))
    ax.set_xticklabels(class_names, rotation=90, fontsize=7)
    ax.set_yticklabels(class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = float(cm.diag().sum() / cm.sum().clamp_min(1))
    ax.set_title(f"{title}\ntop-1 {100 * acc:.1f}% (chance {100 / max(K, 1):.1f}%)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
