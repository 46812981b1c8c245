"""3D question answering: spiking 3D encoder -> trainable alignment layer -> frozen causal LM (SVL downstream).

Wiring only: :class:`~spikelight.models.point_llm.PointLLM` (encoder + projector + LM, prompt, loss,
generation), :func:`~spikelight.losses.answer_lm_loss`, the QA DataModules of
:mod:`spikelight.datamodules.pointcloud.qa` (batches with ``points``, ``question``, ``answer``, ``qtype``,
``qid``).

* Frozen, rebuildable part (:meth:`~spikelight.tasks.base.SpikelightTask.declare_frozen`): the PointLLM -
  the LM from the local Hugging Face folder ``lm`` and the encoder (model spec ``encoder``, weights
  ``encoder_weights``: an SVL checkpoint, a Rep-VLI deploy folder or a state_dict file, loaded with
  :func:`spikelight.models.pretrained.load_pretrained_encoder`; ``None``: random weights built under
  ``seed``). It is never in a checkpoint (the checkpoint records the folder / file instead). Its alignment
  layer is the task's trainable submodule ``self.projector`` (the same module object the PointLLM runs), so
  a checkpoint holds ``projector.*`` only; with ``train_encoder: true`` the encoder trains too and is the
  submodule ``self.encoder`` (``encoder.*`` in checkpoints). ``fit`` asserts that nothing else trains and
  logs ``model/trainable_params``.
* One step: points -> encoder (no graph when frozen) -> projector -> ``k`` point tokens in the prompt
  ``[BOS] "{points}\\nQuestion: {question}\\nAnswer:"`` -> LM; loss on the answer tokens only.
* Validation / test: ``{stage}/loss`` (answer loss) and generated answers (``transformers`` ``generate``,
  greedy by default, ``max_new_tokens``, ``generate_kwargs``) compared with the reference after
  :func:`~spikelight.models.point_llm.normalize_answer`: ``{stage}/acc`` (exact match) and
  ``{stage}/acc_<qtype>`` per question type; later evaluation sets log ``{stage}_<set>/...``. Predictions
  (qid, qtype, question, answer, output, correct) go to ``<run>/predictions/<stage>-<set>.jsonl``;
  ``predict_step`` returns the same records as columns.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from spikelight.models import ModelConfig
from spikelight.models.point_llm import QA_TEMPLATE, normalize_answer
from spikelight.tasks.base import SpikelightTask
from spikelight.tasks.records_eval import RecordsEvalMixin

__all__ = ["PointQA", "default_point_qa_adamw"]


def default_point_qa_adamw(params) -> torch.optim.Optimizer:
    """Default optimizer of the alignment layer: AdamW(lr=1e-3, weight_decay=0.0)."""
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)


class PointQA(RecordsEvalMixin, SpikelightTask):
    """3D QA with a frozen LM (see the module docstring).

    Args:
        lm: local Hugging Face causal-LM folder (``AutoModelForCausalLM``; offline).
        encoder: the 3D encoder's model spec (registered name, ``{name: ..., <kwargs>}``,
            ``{class_path: ..., init_args: ...}``); ``None``: the spec recorded in ``encoder_weights``.
        encoder_weights: SVL-pretrained (or earlier) encoder weights; ``None``: random (built under ``seed``).
        train_encoder: also train the encoder (default: frozen, PointLLM style).
        num_tokens / projector_hidden: point tokens ``k`` and the alignment MLP's hidden width.
        template, answer_prefix, add_eos: the prompt and the target (``{points}``, ``{question}``).
        max_new_tokens, generate_kwargs: generation in evaluation (``generate_kwargs`` go to
            ``transformers``' ``generate``, e.g. ``{num_beams: 3}``).
        dtype: the LM's dtype (``"bfloat16"`` ...; the projector stays float32).
        seed: RNG seed the frozen part (random encoder, initial projector) is built under.
        optimizer, kwargs (warmup_epochs, warmup_start_lr, min_lr, scheduler): :class:`SpikelightTask`.
    """

    def __init__(
        self,
        *,
        lm: str,
        encoder: Optional[ModelConfig] = None,
        encoder_weights: Optional[str] = None,
        train_encoder: bool = False,
        num_tokens: int = 4,
        projector_hidden: Optional[int] = None,
        template: str = QA_TEMPLATE,
        answer_prefix: str = " ",
        add_eos: bool = True,
        max_new_tokens: int = 8,
        generate_kwargs: Optional[dict[str, Any]] = None,
        dtype: Optional[str] = None,
        seed: int = 0,
        optimizer: OptimizerCallable = default_point_qa_adamw,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer=optimizer, **kwargs)
        if encoder is None and encoder_weights is None:
            raise ValueError("PointQA: give the encoder spec, or encoder_weights that record one")
        if template.count("{points}") != 1 or "{question}" not in template:
            raise ValueError(f"PointQA: template needs '{{points}}' once and '{{question}}', got {template!r}")
        if dtype is not None and not isinstance(getattr(torch, str(dtype), None), torch.dtype):
            raise ValueError(f"PointQA: dtype must name a torch dtype (e.g. 'bfloat16'), got {dtype!r}")
        self.save_hyperparameters(ignore=["optimizer"])
        describe = {"lm": str(lm), "encoder": encoder, "encoder_weights": encoder_weights, "dtype": dtype,
                    "seed": seed}  # fmt: skip
        self.declare_frozen("point_llm", self._build, seed=seed, describe=describe)
        self.projector: Optional[nn.Module] = None  # the alignment layer, attached with the PointLLM
        self.trainable_params = 0
        self._init_records()

    # ================================================================== the model
    def _build(self) -> nn.Module:
        from spikelight.models.point_llm import load_point_llm

        h = self.hparams
        return load_point_llm(h.encoder, h.lm, encoder_weights=h.encoder_weights,
                              dtype=getattr(torch, h.dtype) if h.dtype else None, num_tokens=h.num_tokens,
                              projector_hidden=h.projector_hidden, template=h.template,
                              answer_prefix=h.answer_prefix, add_eos=h.add_eos)  # fmt: skip

    @property
    def point_llm(self):
        """The PointLLM with its trainable parts attached (built on first use)."""
        return self._attach()

    def _attach(self):
        first = not self.frozen_is_built("point_llm")
        model = self.frozen("point_llm")
        if first or self.projector is None:
            model.set_trainable("align_encoder" if self.hparams.train_encoder else "align")
            model.projector.float().to(self.device)
            self.projector = model.projector  # registered: in state_dict / checkpoints
            if self.hparams.train_encoder:
                self.encoder = model.encoder
            model.train(self.training)
        return model

    def configure_model(self) -> None:
        self._attach()

    def train(self, mode: bool = True) -> "PointQA":
        super().train(mode)
        if self.frozen_is_built("point_llm"):
            self.frozen("point_llm").train(mode)  # frozen parts stay in eval mode
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        keep = ("projector.", "encoder.") if self.hparams.train_encoder else ("projector.",)
        state = checkpoint.get("state_dict") or {}
        for key in [k for k in state if not k.startswith(keep)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._attach()  # the projector (and a trained encoder) must exist before their weights are loaded

    def trainable_named(self) -> list[str]:
        """Names (``point_llm.*``) of the PointLLM's parameters that train."""
        return [n for n, p in self.point_llm.named_parameters() if p.requires_grad]

    def on_fit_start(self) -> None:
        model = self._attach()
        own = {id(p) for p in self.projector.parameters()}
        if self.hparams.train_encoder:
            own |= {id(p) for p in model.encoder.parameters()}
        named = list(self.named_parameters()) + [(f"point_llm.{n}", p) for n, p in model.named_parameters()]
        bad = sorted({n for n, p in named if p.requires_grad and id(p) not in own})
        if bad or not any(p.requires_grad for p in self.projector.parameters()):
            what = "the alignment layer and the encoder" if self.hparams.train_encoder else "the alignment layer"
            raise RuntimeError(f"PointQA: only {what} may train; trainable outside: {bad[:8]}"
                               f"{' ...' if len(bad) > 8 else ''}")  # fmt: skip
        self.trainable_params = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        rank_zero_info(f"PointQA: training {self.trainable_params:,} of {total:,} parameters "
                       f"({'projector + encoder' if self.hparams.train_encoder else 'projector only'})")  # fmt: skip
        for logger in self.loggers:
            logger.log_metrics({"model/trainable_params": float(self.trainable_params)}, step=0)

    # ================================================================== training
    def forward(self, batch: dict[str, Any]) -> Tensor:
        """The answer loss of a batch (``points``, ``question``, ``answer``)."""
        return self.loss(batch)

    def loss(self, batch: dict[str, Any]) -> Tensor:
        return self.point_llm.loss(batch["points"], batch["question"], batch["answer"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self.point_llm.train(True)
        loss = self.loss(batch)
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=int(batch["points"].shape[0]))
        return loss

    # ================================================================== evaluation
    @torch.no_grad()
    def generate(self, batch: dict[str, Any]) -> list[str]:
        """Generated answers of a batch."""
        h = self.hparams
        return self.point_llm.generate(batch["points"], batch["question"], max_new_tokens=h.max_new_tokens,
                                       **(h.generate_kwargs or {}))  # fmt: skip

    def score_batch(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """One prediction record per question: qid, qtype, question, answer, output, correct (exact match)."""
        outputs = self.generate(batch)
        n = len(outputs)
        qtypes = batch.get("qtype") or [""] * n
        qids = batch.get("qid") or [""] * n
        return [{"qid": qids[i], "qtype": qtypes[i], "task_type": qtypes[i], "question": batch["question"][i],
                 "answer": batch["answer"][i], "output": outputs[i],
                 "correct": normalize_answer(outputs[i]) == normalize_answer(batch["answer"][i])}
                for i in range(n)]  # fmt: skip

    def _eval_module(self) -> nn.Module:
        return self.point_llm

    def _eval_step(self, stage: str, batch: dict[str, Any], dataloader_idx: int) -> None:
        self.point_llm.train(False)
        names = self._set_names()
        name = names[dataloader_idx] if dataloader_idx < len(names) else f"set{dataloader_idx}"
        prefix = stage if dataloader_idx == 0 else f"{stage}_{name}"
        with torch.no_grad():
            loss = self.loss(batch)
        self.log_mean(f"{prefix}/loss", loss, int(batch["points"].shape[0]), add_dataloader_idx=False)
        self._collect(stage, batch, dataloader_idx)

    def _report(self, stage: str, name: str, summary: dict[str, float]) -> None:
        parts = ", ".join(f"{k[4:]} {v:.3f}" for k, v in sorted(summary.items()) if k.startswith("acc_"))
        rank_zero_info(f"PointQA {stage} [{name}]: exact match {summary['acc']:.3f} on "
                       f"{int(summary['count'])} questions ({parts})")  # fmt: skip

    def _record_for_file(self, record: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in record.items() if k != "task_type"}  # task_type repeats qtype

    def infer(self, batch: dict[str, Any]) -> Tensor:
        """The point tokens of a batch (energy / export tools run the encoder through this)."""
        return self.point_llm.point_tokens(batch["points"])
