"""LVC alignment tuning and long-video MCQ evaluation of a frozen Hugging Face VLM (REFERENCE section 3).

Wiring only: VLM adapter (``models.vlm.load_vlm``), ``models.lvc.QueryAttentionCompression``,
``losses.answer_lm_loss``, ``datamodules.video.VisionFeatureCache``.

* The VLM (vision tower + alignment layer + LLM, loaded from the local folder ``vlm``) is a frozen,
  rebuildable part (:meth:`~spikelight.tasks.base.SpikelightTask.declare_frozen`): it is never in a
  checkpoint, which records its folder / revision instead. Its alignment layer (the projector) is the
  task's one trainable submodule ``self.projector`` (the same module object the VLM runs), so a checkpoint
  holds ``projector.*`` only; a resume reloads the base model and restores the projector. The VLM is
  attached in ``configure_model`` (before the optimizer and a checkpoint restore); ``fit`` asserts that
  only the alignment layer trains and logs ``model/trainable_params``.
* One step: frames -> frozen vision tower (or the on-disk ``feature_cache``) -> projector (float32) ->
  compression (``window`` frames -> 1 pseudo-frame, query = mean question embedding; ``compress: false``
  or ``window: 1`` = none) -> visual tokens scattered into the prompt -> LLM; loss on the answer tokens
  only (prompt, visual tokens and padding are ``-100``; logits are computed for the answer positions only).
* Prompts, chat-free, the same for every adapter (``{visual}`` = ``vlm.visual_prompt(n)`` for the ``n``
  (pseudo-)frames reaching the LLM, ``{subtitles}`` = ``"Subtitles: ...\\n"`` or nothing)::

      pairs:  "{visual}\\n{prompt}\\nAnswer:"                       target " {answer}</s>"
      MCQ:    "{visual}\\n{subtitles}Question: {question}\\nOptions:\\n{options}\\nAnswer:"
              options one per line, "{letter}. {text}"             target " {option}</s>" (score_target)

  Text segments are tokenized without special tokens (plus the tokenizer's BOS when it adds one).
* Evaluation on :class:`~spikelight.datamodules.video.VideoMCQDataModule` batches: ``mcq_mode:
  likelihood`` scores every option by the ``sum`` (or ``mean``) log-probability of its tokens after the
  prompt (one prefill per question, options continue from its KV cache) and takes the argmax;
  ``generate`` decodes greedily and parses a letter (:func:`parse_letter`). Accuracy overall, per task type
  and per duration class (plain counters, gathered over ranks at the epoch's end) is logged as
  ``val/acc``, ``val/acc_<task_type>``, ``val/acc_duration_<class>`` (``val_<set>/...`` for later sets,
  ``test/...`` in ``test``); predictions (qid, video, pred, answer_index, correct, scores, ...) go to
  ``<run>/predictions/<stage>-<set>.jsonl``; ``predict_step`` returns the same records as columns.
  Pair batches (``prompt`` / ``answer``) in validation give ``val/loss``; MCQ batches in training train on
  the right option's target.
* Scale: ``dtype: bfloat16`` loads the frozen VLM in bf16 (the projector stays float32; the trainer's
  ``precision: bf16-mixed`` autocasts), ``gradient_checkpointing`` recomputes the LLM layers in backward.
  Under ``FSDPStrategy`` (``experiments/lvc/fsdp.yaml``, GPU only) the VLM joins the module tree in
  ``configure_model`` so the auto-wrap policy shards its decoder layers; checkpoints keep ``projector.*``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from spikelight.losses import answer_lm_loss, answer_positions
from spikelight.tasks.base import SpikelightTask
from spikelight.tasks.records_eval import RecordsEvalMixin, accuracy_summary, write_predictions

__all__ = ["LVCAlign", "PAIR_TEMPLATE", "MCQ_TEMPLATE", "accuracy_summary", "default_lvc_adamw", "parse_letter"]

PAIR_TEMPLATE = "{visual}\n{prompt}\nAnswer:"
MCQ_TEMPLATE = "{visual}\n{subtitles}Question: {question}\nOptions:\n{options}\nAnswer:"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def default_lvc_adamw(params) -> torch.optim.Optimizer:
    """Default optimizer of the projector: AdamW(lr=1e-4, weight_decay=0.0)."""
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)


def parse_letter(text: str, num_options: int) -> Optional[int]:
    """The option index a generated answer names (``"B"``, ``"(B)"``, ``"B. ..."``, ``"The answer is B"``),
    or ``None``. Only the first ``num_options`` letters count."""
    valid = LETTERS[:num_options]
    t = text.strip()
    for pattern in (r"^\(?([A-Z])\)?(?=[\s.:,)]|$)", r"answer\s*(?:is|:)?\s*\(?([A-Z])\b", r"\(([A-Z])\)",
                    r"\b([A-Z])\b"):
        for m in re.finditer(pattern, t, flags=re.IGNORECASE if "answer" in pattern else 0):
            letter = m.group(1).upper()
            if letter in valid:
                return valid.index(letter)
    return None


def _projector_state(path: str) -> dict[str, Tensor]:
    """The projector's state dict from an LVCAlign checkpoint or a safetensors file."""
    p = Path(path).expanduser()
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    state = torch.load(p, map_location="cpu", weights_only=True).get("state_dict") or {}  # missing: an OSError
    out = {k[len("projector.") :]: v for k, v in state.items() if k.startswith("projector.")}
    if not out:
        raise ValueError(f"projector_weights: {p} holds no projector.* weights (not an LVCAlign checkpoint)")
    return out


class LVCAlign(RecordsEvalMixin, SpikelightTask):
    """Alignment-layer tuning with query-attention video compression (see the module docstring).

    Args:
        vlm: local Hugging Face folder of the base VLM (InternVL / LLaVA-OneVision ``transformers`` format,
            or Phi-3.5-Vision with ``trust_remote_code``).
        revision: label of the folder's weights recorded in checkpoints (e.g. the hub commit it was
            downloaded at); not used for loading (local folders only).
        trust_remote_code, dtype: :func:`~spikelight.models.vlm.load_vlm` (``dtype``: ``"bfloat16"`` ...).
        window, compress, scale, temperature, mean_residual: the compression (``window: 1`` or
            ``compress: false``: every frame reaches the LLM).
        gradient_checkpointing: recompute the LLM's layers in backward.
        feature_cache: folder of a :class:`~spikelight.datamodules.video.VisionFeatureCache` (vision-tower
            outputs per video, keyed by file + the datamodule's sampling + model folder / revision + frame
            transform); later epochs skip the vision tower.
        pair_template, mcq_template, option_template, answer_prefix, add_eos: prompt building.
        mcq_mode: ``"likelihood"`` or ``"generate"``; option_score: ``"sum"`` or ``"mean"`` log-prob;
        score_target: what is scored / trained for an option: ``"text"``, ``"letter"`` or ``"letter_text"``.
        max_new_tokens: generation length in ``generate`` mode.
        vision_batch: frames per vision-tower call (bounds memory on dense videos).
        projector_weights: start from these projector weights: an LVCAlign checkpoint (e.g. the alignment
            run's ``last.ckpt``; its ``projector.*``) or a safetensors file of the projector's state dict.
            Evaluation configs use it to score a tuned projector (``--ckpt_path`` would demand the training
            run's exact arguments); ``None`` = the base model's own projector.
        optimizer, kwargs (warmup_epochs, warmup_start_lr, min_lr, scheduler): :class:`~spikelight.tasks.base.SpikelightTask`.
    """

    def __init__(
        self,
        *,
        vlm: str,
        revision: Optional[str] = None,
        trust_remote_code: bool = False,
        dtype: Optional[str] = None,
        window: int = 4,
        compress: bool = True,
        scale: Optional[float] = None,
        temperature: float = 1.0,
        mean_residual: float = 0.0,
        gradient_checkpointing: bool = False,
        feature_cache: Optional[str] = None,
        pair_template: str = PAIR_TEMPLATE,
        mcq_template: str = MCQ_TEMPLATE,
        option_template: str = "{letter}. {text}",
        answer_prefix: str = " ",
        add_eos: bool = True,
        mcq_mode: str = "likelihood",
        option_score: str = "sum",
        score_target: str = "text",
        max_new_tokens: int = 8,
        vision_batch: int = 64,
        projector_weights: Optional[str] = None,
        optimizer: OptimizerCallable = default_lvc_adamw,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer=optimizer, **kwargs)
        for name, value, allowed in (("mcq_mode", mcq_mode, ("likelihood", "generate")),
                                     ("option_score", option_score, ("sum", "mean")),
                                     ("score_target", score_target, ("text", "letter", "letter_text"))):  # fmt: skip
            if value not in allowed:
                raise ValueError(f"LVCAlign: {name} must be one of {allowed}, got {value!r}")
        if dtype is not None and not isinstance(getattr(torch, str(dtype), None), torch.dtype):
            raise ValueError(f"LVCAlign: dtype must name a torch dtype (e.g. 'bfloat16'), got {dtype!r}")
        for name, tpl in (("pair_template", pair_template), ("mcq_template", mcq_template)):
            if tpl.count("{visual}") != 1:
                raise ValueError(f"LVCAlign: {name} must hold '{{visual}}' exactly once, got {tpl!r}")
        self.save_hyperparameters(ignore=["optimizer"])
        from spikelight.models.lvc import QueryAttentionCompression

        self.compression = None
        if compress and window > 1:
            self.compression = QueryAttentionCompression(window=window, scale=scale, temperature=temperature,
                                                         mean_residual=mean_residual)  # fmt: skip
        describe = {"vlm": str(vlm), "revision": revision, "dtype": dtype, "trust_remote_code": trust_remote_code}
        self.declare_frozen("vlm", self._build_vlm, describe=describe)
        self.projector: Optional[nn.Module] = None  # the VLM's alignment layer, attached with the VLM
        self.trainable_params = 0
        self._cache = None
        self._vis_ids: dict[Any, list[int]] = {}  # token ids of visual prompts by frame count (+ BOS)
        self._init_records()

    # ================================================================== the VLM and its projector
    def _build_vlm(self) -> nn.Module:
        from spikelight.models.vlm import load_vlm

        h = self.hparams
        return load_vlm(h.vlm, trust_remote_code=h.trust_remote_code,
                        dtype=getattr(torch, h.dtype) if h.dtype else None)  # fmt: skip

    @property
    def vlm(self):
        """The frozen VLM adapter with its projector attached as ``self.projector`` (built on first use)."""
        return self._attach()

    def _attach(self):
        first = not self.frozen_is_built("vlm")
        vlm = self.frozen("vlm")
        if first or self.projector is None:
            vlm.set_trainable("align")  # frozen() froze everything; the alignment layer trains
            if self.hparams.gradient_checkpointing:
                vlm.enable_gradient_checkpointing()
            proj = vlm.alignment_layer.float()  # float32 master weights (bf16 frozen VLM: autocast / casts)
            proj.to(self.device).train(self.training)  # frozen() left it in eval mode
            if self.hparams.projector_weights:
                proj.load_state_dict(_projector_state(self.hparams.projector_weights))
            self.projector = proj  # a registered submodule: the only weights in state_dict / checkpoints
        return vlm

    def configure_model(self) -> None:
        vlm = self._attach()
        strategy = getattr(self._trainer, "strategy", None) if self._trainer is not None else None
        if type(strategy).__name__ == "FSDPStrategy" and "vlm" not in self._modules:
            # in the module tree so the auto-wrap policy shards the frozen decoder layers (GPU only);
            # its keys never reach a checkpoint (on_save_checkpoint keeps projector.* only)
            self._modules["vlm"] = vlm

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        state = checkpoint.get("state_dict") or {}
        for key in [k for k in state if not k.startswith("projector.")]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._attach()  # the projector must exist before its weights are loaded

    def on_fit_start(self) -> None:
        vlm = self._attach()
        own = {id(p) for p in self.projector.parameters()}
        named = list(self.named_parameters()) + [(f"vlm.{n}", p) for n, p in vlm.named_parameters()]
        bad = sorted({n for n, p in named if p.requires_grad and id(p) not in own})
        if bad or not any(p.requires_grad for p in self.projector.parameters()):
            raise RuntimeError(f"LVCAlign: only the alignment layer may train; trainable outside it: {bad[:8]}"
                               f"{' ...' if len(bad) > 8 else ''} (alignment layer trainable: "
                               f"{any(p.requires_grad for p in self.projector.parameters())})")  # fmt: skip
        self.trainable_params = sum(p.numel() for p in self.projector.parameters() if p.requires_grad)
        total = sum(p.numel() for p in vlm.parameters())
        rank_zero_info(f"LVCAlign: training the alignment layer only: {self.trainable_params:,} of {total:,} "
                       f"parameters ({type(self.projector).__name__})")  # fmt: skip
        for logger in self.loggers:
            logger.log_metrics({"model/trainable_params": float(self.trainable_params)}, step=0)

    # ================================================================== prompts
    @property
    def tokenizer(self):
        return self.vlm.tokenizer

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _bos(self) -> list[int]:
        if "bos" in self._vis_ids:
            return self._vis_ids["bos"]
        tok = self.tokenizer
        with_sp, without = tok("a")["input_ids"], tok("a", add_special_tokens=False)["input_ids"]
        k = len(with_sp) - len(without)
        self._vis_ids["bos"] = list(with_sp[:k]) if k > 0 and list(with_sp[k:]) == list(without) else []
        return self._vis_ids["bos"]

    def _visual_ids(self, n: int) -> list[int]:
        if n not in self._vis_ids:
            self._vis_ids[n] = self._ids(self.vlm.visual_prompt(n))
        return self._vis_ids[n]

    def _llm_frames(self, frames_mask: Tensor) -> list[int]:
        """(Pseudo-)frames of each video that reach the LLM."""
        counts = frames_mask.sum(dim=1).tolist()
        w = self.compression.window if self.compression is not None else 1
        return [-(-int(m) // w) for m in counts]

    def _option_target(self, index: int, text: str) -> str:
        kind = self.hparams.score_target
        letter = LETTERS[index]
        if kind == "letter":
            return letter
        if kind == "letter_text":
            return self.hparams.option_template.format(letter=letter, text=text)
        return text

    def prompts(self, batch: dict[str, Any]) -> tuple[list[list[int]], list[list[int]]]:
        """Per sample: the prompt ids (visual placeholders included) and the question ids (the query)."""
        h = self.hparams
        mcq = "options" in batch
        n_frames = self._llm_frames(batch["frames_mask"])
        prompts, questions = [], []
        for i, n in enumerate(n_frames):
            if mcq:
                opts = "\n".join(h.option_template.format(letter=LETTERS[k], text=o)
                                 for k, o in enumerate(batch["options"][i]))  # fmt: skip
                subs = (batch.get("subtitles") or [""] * len(n_frames))[i]
                fields = {"question": batch["question"][i], "options": opts,
                          "subtitles": f"Subtitles: {subs}\n" if subs else ""}  # fmt: skip
                question = batch["question"][i]
            else:
                fields = {"prompt": batch["prompt"][i], "subtitles": ""}
                question = batch["prompt"][i]
            before, after = (h.mcq_template if mcq else h.pair_template).split("{visual}")
            ids = self._bos() + self._ids(before.format(**fields)) + self._visual_ids(n) + self._ids(after.format(**fields))
            prompts.append(ids)
            questions.append(self._ids(question) or self._ids(after.format(**fields)))
        return prompts, questions

    def _target_ids(self, text: str) -> list[int]:
        eos = self.tokenizer.eos_token_id
        return self._ids(self.hparams.answer_prefix + text) + ([eos] if self.hparams.add_eos and eos is not None else [])

    def _pad(self, seqs: list[list[int]], pad: Optional[int] = None) -> tuple[Tensor, Tensor]:
        pad_id = pad if pad is not None else (self.tokenizer.pad_token_id or 0)
        width = max(1, max(len(s) for s in seqs))
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    def training_inputs(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """``input_ids``, ``attention_mask``, ``labels`` (``-100`` except the answer tokens), question ids /
        mask of a pair batch (``prompt``, ``answer``) or an MCQ batch (target: the right option)."""
        prompts, questions = self.prompts(batch)
        if "options" in batch:
            answers = [self._option_target(int(k), batch["options"][i][int(k)])
                       for i, k in enumerate(batch["answer_index"].tolist())]  # fmt: skip
        else:
            answers = list(batch["answer"])
        targets = [self._target_ids(a) for a in answers]
        ids, mask = self._pad([p + t for p, t in zip(prompts, targets)])
        labels = torch.full_like(ids, -100)
        for i, (p, t) in enumerate(zip(prompts, targets)):
            labels[i, len(p) : len(p) + len(t)] = torch.as_tensor(t, device=ids.device)
        q_ids, q_mask = self._pad(questions)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "question_ids": q_ids,
                "question_mask": q_mask}  # fmt: skip

    # ================================================================== vision features (+ cache)
    def _feature_cache(self):
        if self.hparams.feature_cache is None:
            return None
        if self._cache is None:
            from spikelight.datamodules.video import VisionFeatureCache

            self._cache = VisionFeatureCache(self.hparams.feature_cache)
        return self._cache

    def _cache_keys(self) -> tuple[Any, str]:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "sampling") or not hasattr(getattr(dm, "transform", None), "fingerprint"):
            raise ValueError("LVCAlign: feature_cache needs a video datamodule (its sampling and frame transform "
                             "name the cached features); set feature_cache: null otherwise")  # fmt: skip
        h = self.hparams
        return dm.sampling, f"{Path(h.vlm).expanduser().resolve()}@{h.revision}|{dm.transform.fingerprint}"

    @torch.no_grad()
    def vision_features(self, batch: dict[str, Any]) -> Tensor:
        """Frozen vision-tower outputs ``[B, M, t_raw, C]`` of the batch's real frames (zeros for padding),
        read from / written to the feature cache when one is configured."""
        vlm, frames, mask = self.vlm, batch["frames"], batch["frames_mask"].to(torch.bool)
        cache = self._feature_cache()
        rows: dict[int, Tensor] = {}
        if cache is not None:
            sampling, model_fp = self._cache_keys()
            for i, video in enumerate(batch["video"]):
                got = cache.get(video, sampling, model_fp)
                if got is not None and got.shape[0] == int(mask[i].sum()):
                    rows[i] = got
        todo = [i for i in range(frames.shape[0]) if i not in rows]
        if todo:
            real = frames[todo][mask[todo]]
            feats = torch.cat([vlm.vision_features(real[j : j + self.hparams.vision_batch])
                               for j in range(0, real.shape[0], self.hparams.vision_batch)])  # fmt: skip
            counts = mask[todo].sum(dim=1).tolist()
            for i, f in zip(todo, torch.split(feats, counts)):
                rows[i] = f
                if cache is not None:
                    cache.put(batch["video"][i], sampling, model_fp, f)
        first = next(iter(rows.values()))
        out = torch.zeros(frames.shape[0], frames.shape[1], *first.shape[1:], dtype=first.dtype, device=self.device)
        for i, f in rows.items():
            out[i, : f.shape[0]] = f.to(self.device)
        return out

    # ================================================================== training
    def forward(self, batch: dict[str, Any], **lm_kwargs: Any) -> Any:
        """The VLM's output on a batch (training inputs: prompt + answer)."""
        inputs = self.training_inputs(batch)
        return self._run(batch, inputs, **lm_kwargs)

    def _run(self, batch: dict[str, Any], inputs: dict[str, Tensor], labels: bool = False, **lm_kwargs: Any) -> Any:
        vlm = self.vlm
        feats = self.vision_features(batch)
        feats = feats.to(next(self.projector.parameters()).dtype)
        return vlm(inputs["input_ids"], inputs["attention_mask"], features=feats,
                   frame_mask=batch["frames_mask"].to(self.device), compression=self.compression,
                   question_ids=inputs["question_ids"], question_mask=inputs["question_mask"],
                   labels=inputs["labels"] if labels else None, **lm_kwargs)  # fmt: skip

    def loss(self, batch: dict[str, Any]) -> Tensor:
        """Mean cross-entropy over the answer tokens (logits are computed at those positions only)."""
        inputs = self.training_inputs(batch)
        keep, _ = answer_positions(inputs["labels"])
        out = self._run(batch, inputs, logits_to_keep=keep, use_cache=False)
        return answer_lm_loss(out.logits, inputs["labels"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self.vlm.train(True)  # frozen parts stay in eval mode (LLM in train mode only for checkpointing)
        loss = self.loss(batch)
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=int(batch["frames"].shape[0]))
        return loss

    # ================================================================== MCQ scoring
    def _prefill(self, batch: dict[str, Any]) -> tuple[Any, Tensor, Tensor, Tensor]:
        """Run the prompts once: ``(kv cache, last-position logits [B, V], prompt mask, prompt lengths)``."""
        prompts, questions = self.prompts(batch)
        ids, mask = self._pad(prompts)
        q_ids, q_mask = self._pad(questions)
        lengths = mask.sum(dim=1)
        last = torch.zeros_like(mask, dtype=torch.bool)
        last[torch.arange(len(prompts)), lengths - 1] = True
        inputs = {"input_ids": ids, "attention_mask": mask, "question_ids": q_ids, "question_mask": q_mask}
        out = self._run(batch, inputs, use_cache=True, logits_to_keep=last)
        return out.cache, out.logits, mask, lengths

    @torch.no_grad()
    def option_scores(self, batch: dict[str, Any]) -> list[list[float]]:
        """Per question, the ``option_score`` (sum / mean) log-probability of each option's target tokens
        given the prompt: one prefill, then every option continues from the prompt's KV cache."""
        cache, first, mask, lengths = self._prefill(batch)
        rows = [i for i, opts in enumerate(batch["options"]) for _ in opts]
        targets = [self._target_ids(self._option_target(k, o)) for opts in batch["options"] for k, o in enumerate(opts)]
        rows_t = torch.as_tensor(rows, device=self.device)
        cache.batch_select_indices(rows_t)
        opt_ids, opt_mask = self._pad(targets)
        steps = torch.arange(opt_ids.shape[1], device=self.device)
        out = self.vlm.model(input_ids=opt_ids, attention_mask=torch.cat([mask[rows_t], opt_mask], dim=1),
                             position_ids=lengths[rows_t, None] + steps, cache=cache, use_cache=False)  # fmt: skip
        logp_first = F.log_softmax(first.float()[rows_t], dim=-1).gather(1, opt_ids[:, :1])  # [R, 1]
        logp_rest = F.log_softmax(out.logits[:, :-1].float(), dim=-1).gather(2, opt_ids[:, 1:, None])[..., 0]
        logp = torch.cat([logp_first, logp_rest], dim=1) * opt_mask
        score = logp.sum(dim=1)
        if self.hparams.option_score == "mean":
            score = score / opt_mask.sum(dim=1).clamp_min(1)
        return [s.tolist() for s in torch.split(score, [len(o) for o in batch["options"]])]

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], max_new_tokens: Optional[int] = None) -> list[str]:
        """Greedy answers after the prompt (decoded text, up to EOS or ``max_new_tokens``)."""
        n_new = int(max_new_tokens or self.hparams.max_new_tokens)
        cache, logits, mask, lengths = self._prefill(batch)
        eos = self.tokenizer.eos_token_id
        done = torch.zeros(mask.shape[0], dtype=torch.bool, device=self.device)
        tokens = []
        for step in range(n_new):
            nxt = logits.float().argmax(dim=-1)  # [B]
            tokens.append(torch.where(done, torch.full_like(nxt, -1), nxt))
            done = done | (nxt == eos) if eos is not None else done
            if bool(done.all()) or step == n_new - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = self.vlm.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=(lengths + step)[:, None],
                                 cache=cache, use_cache=True)  # fmt: skip
            cache, logits = out.cache, out.logits[:, -1]
        seqs = torch.stack(tokens, dim=1).tolist()
        return [self.tokenizer.decode([t for t in s if t >= 0 and t != eos], skip_special_tokens=True) for s in seqs]

    def score_batch(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """One prediction record per question (``qid``, ``video``, ``pred``, ``answer_index``, ``correct``,
        ``scores`` / ``output``, ``task_type``, ``duration_class``, ``duration``)."""
        answer = batch["answer_index"].tolist()
        if self.hparams.mcq_mode == "likelihood":
            scores = self.option_scores(batch)
            preds = [max(range(len(s)), key=s.__getitem__) for s in scores]
            outputs: list[Optional[str]] = [None] * len(preds)
        else:
            outputs = self.generate(batch)
            parsed = [parse_letter(t, len(o)) for t, o in zip(outputs, batch["options"])]
            preds = [-1 if p is None else p for p in parsed]
            scores = [None] * len(preds)
        n = len(preds)
        duration = batch.get("duration")
        records = []
        for i in range(n):
            d = float(duration[i]) if duration is not None else math.nan
            records.append({"qid": (batch.get("qid") or [""] * n)[i], "video": batch["video"][i], "pred": preds[i],
                            "answer_index": answer[i], "correct": preds[i] == answer[i], "scores": scores[i],
                            "output": outputs[i], "task_type": (batch.get("task_type") or [""] * n)[i],
                            "duration_class": (batch.get("duration_class") or [""] * n)[i],
                            "duration": d if math.isfinite(d) else None})  # fmt: skip
        return records

    # ================================================================== evaluation loop
    def _eval_step(self, stage: str, batch: dict[str, Any], dataloader_idx: int) -> Optional[Tensor]:
        self.vlm.train(False)
        if "options" not in batch:  # video-text pairs: answer loss
            with torch.no_grad():
                loss = self.loss(batch)
            self.log_mean(f"{stage}/loss", loss, int(batch["frames"].shape[0]), add_dataloader_idx=False)
            return loss
        self._collect(stage, batch, dataloader_idx)
        return None

    def _set_names(self) -> list[str]:
        names = super()._set_names()
        trainer = self._trainer
        sets = getattr(getattr(trainer, "datamodule", None), "annotations", None) if trainer is not None else None
        if len(names) <= 1 and isinstance(sets, dict) and len(sets) == 1:  # one MCQ set: its own name
            names = list(sets)
        return names

    def _eval_module(self) -> nn.Module:
        return self.vlm

    write_predictions = staticmethod(write_predictions)

    def infer(self, batch: dict[str, Any]) -> Optional[Tensor]:
        """Logits of the training inputs (energy / export tools)."""
        return self(batch).logits
