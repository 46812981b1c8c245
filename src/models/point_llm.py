"""Spiking 3D encoder -> alignment layer -> frozen causal LM: 3D question answering (SVL downstream, PointLLM
style; REFERENCE section 1 "Downstream").

::

    points [B, N, 6] --encoder (spiking, frozen by default)--> x [B, C]        (global embedding)
                     --projector (the alignment layer)-------> [B, k, d]       (k point tokens)
                     --scattered into the prompt-------------> causal LM (frozen) -> answer tokens

Point tokens: the encoder's global embedding (every spikelight 3D encoder ends in one, ``[B, C]``) is mapped
by one MLP to ``k`` tokens of the LM's width ``d`` (``LayerNorm(C) -> Linear(C, h) -> GELU -> Linear(h, k d)``,
reshaped to ``[B, k, d]``; ``k = num_tokens``, default 4). One token would be the embedding alone; ``k``
tokens let the alignment layer spread what the embedding holds over several LM positions at the cost of
``k`` prompt positions (group-level features would need an encoder-specific interface; the global
embedding works with Spike PointNet, E-3DSNN and PointFormer alike).

Prompt (chat-free, as LVC's pair template; ``{points}`` = the ``k`` point tokens)::

    [BOS] "{points}\\nQuestion: {question}\\nAnswer:"  target " {answer}</s>"

The loss is the cross-entropy over the answer tokens only (:func:`spikelight.losses.answer_lm_loss`; prompt,
point tokens and padding are ``-100``; logits are computed at the answer positions only). Generation uses
``transformers``' ``generate`` on left-padded ``inputs_embeds`` (greedy by default; any generation option
passes through).

:class:`PointLLM` holds the three parts; :meth:`PointLLM.set_trainable` picks what trains (``"align"``:
the projector only, ``"align_encoder"``: projector + encoder, ``"all"``, ``"none"``), frozen parts stay in
eval mode. :func:`load_point_llm` builds one from a model spec (+ SVL weights through
:func:`spikelight.models.pretrained.load_pretrained_encoder`) and a local Hugging Face LM folder
(:mod:`spikelight.hf`, offline). :func:`build_tiny_lm` writes a tiny random LLaMA causal LM with the
word-level tokenizer of the tiny VLMs; :func:`ensure_base_point_llm` makes the synthetic default's stand-ins
for an SVL-pretrained encoder (attribute heads) and an LM that knows the synthetic language (LM + projector
trained on the frozen encoder), cached in a folder.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from spikelight.losses import answer_lm_loss, answer_positions
from spikelight.optim import train_steps

__all__ = [
    "QA_TEMPLATE",
    "PROMPT_WORDS",
    "PointProjector",
    "PointLLM",
    "build_tiny_lm",
    "ensure_base_point_llm",
    "load_point_llm",
    "normalize_answer",
    "pretrain_encoder",
    "pretrain_point_llm",
    "save_encoder_checkpoint",
]

QA_TEMPLATE = "{points}\nQuestion: {question}\nAnswer:"
#: the words of the default template (a tiny word-level tokenizer must know them)
PROMPT_WORDS = ("Question:", "Answer:")


def normalize_answer(text: str) -> str:
    """Lower case, surrounding punctuation / whitespace dropped, inner whitespace collapsed (exact match)."""
    return " ".join(str(text).lower().replace("</s>", " ").strip(" \t\n.,;:!?\"'").split())


# ============================================================================ the alignment layer
class PointProjector(nn.Module):
    """The alignment layer: ``[B, C]`` global embedding -> ``[B, k, d]`` point tokens (module docstring)."""

    def __init__(self, *, in_dim: int, out_dim: int, num_tokens: int = 4, hidden: Optional[int] = None) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"PointProjector: num_tokens must be >= 1, got {num_tokens}")
        hidden = int(hidden or 2 * out_dim)
        self.in_dim, self.out_dim, self.num_tokens = int(in_dim), int(out_dim), int(num_tokens)
        self.norm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, num_tokens * out_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"PointProjector expects [B, {self.in_dim}] embeddings, got {tuple(x.shape)}")
        y = self.fc2(self.act(self.fc1(self.norm(x))))
        return y.view(x.shape[0], self.num_tokens, self.out_dim)


def _embed_dim(encoder: nn.Module) -> int:
    dim = getattr(encoder, "embed_dim", None)
    if dim is None:
        raise ValueError(f"{type(encoder).__name__} has no embed_dim attribute (the size of its global embedding)")
    return int(dim)


# ============================================================================ the model
class PointLLM(nn.Module):
    """Encoder + alignment layer + causal LM (see the module docstring).

    Args:
        encoder: a spikelight 3D encoder (``forward(points [B, N, F]) -> [B, C]``, ``embed_dim``).
        lm: a ``transformers`` causal LM (``get_input_embeddings``, ``generate``).
        tokenizer: its tokenizer (needs ``eos_token_id``; ``pad_token_id`` defaults to EOS).
        num_tokens / projector_hidden: :class:`PointProjector` (``k``, hidden width; default ``2 d``).
        template: the prompt, ``{points}`` once and ``{question}``; answer_prefix / add_eos: the target.
        source: where the LM came from (recorded by tasks).
    """

    def __init__(self, encoder: nn.Module, lm: nn.Module, tokenizer: Any, *, num_tokens: int = 4,
                 projector_hidden: Optional[int] = None, template: str = QA_TEMPLATE, answer_prefix: str = " ",
                 add_eos: bool = True, source: Optional[str] = None) -> None:
        super().__init__()
        if template.count("{points}") != 1 or "{question}" not in template:
            raise ValueError(f"PointLLM: the template needs '{{points}}' once and '{{question}}', got {template!r}")
        if "{question}" in template.split("{points}")[0]:
            raise ValueError("PointLLM: '{question}' must come after '{points}' in the template")
        self.encoder = encoder
        self.lm = lm
        self.tokenizer = tokenizer
        self.source = source
        self.template, self.answer_prefix, self.add_eos = template, answer_prefix, bool(add_eos)
        self.projector = PointProjector(in_dim=_embed_dim(encoder), out_dim=self.hidden_size,
                                        num_tokens=num_tokens, hidden=projector_hidden)  # fmt: skip
        self.trainable_mode = "all"
        self._bos: Optional[list[int]] = None

    @property
    def hidden_size(self) -> int:
        return int(self.lm.get_input_embeddings().embedding_dim)

    @property
    def num_tokens(self) -> int:
        return self.projector.num_tokens

    # ------------------------------------------------------------------ training modes
    MODES = ("align", "align_encoder", "align_lm", "all", "none")

    def set_trainable(self, mode: str = "align") -> "PointLLM":
        """``"align"``: only the projector trains (encoder and LM frozen, eval mode); ``"align_encoder"``:
        projector + encoder; ``"align_lm"``: projector + LM (encoder frozen); ``"all"``: everything;
        ``"none"``: nothing. Returns ``self``."""
        if mode not in self.MODES:
            raise ValueError(f"PointLLM: trainable mode must be one of {self.MODES}, got {mode!r}")
        self.requires_grad_(mode == "all")
        if mode in ("align", "align_encoder", "align_lm"):
            self.projector.requires_grad_(True)
        if mode == "align_encoder":
            self.encoder.requires_grad_(True)
        if mode == "align_lm":
            self.lm.requires_grad_(True)
        self.trainable_mode = mode
        return self.train(self.training)

    def train(self, mode: bool = True) -> "PointLLM":
        super().train(mode)
        if self.trainable_mode != "all":  # frozen parts stay in eval mode (BatchNorm statistics, dropout)
            if self.trainable_mode != "align_lm":
                self.lm.eval()
            if self.trainable_mode != "align_encoder":
                self.encoder.eval()
            if self.trainable_mode == "none":
                self.projector.eval()
        return self

    # ------------------------------------------------------------------ prompt pieces
    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def bos_ids(self) -> list[int]:
        """The BOS the tokenizer adds to a text (``[]`` when it adds none)."""
        if self._bos is None:
            tok = self.tokenizer
            with_sp, without = tok("a")["input_ids"], tok("a", add_special_tokens=False)["input_ids"]
            k = len(with_sp) - len(without)
            self._bos = list(with_sp[:k]) if k > 0 and list(with_sp[k:]) == list(without) else []
        return self._bos

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0))

    def prompt_ids(self, question: str) -> list[int]:
        """Token ids of one prompt; the ``k`` point-token positions hold ``-1``."""
        before, after = self.template.split("{points}")
        return (self.bos_ids() + self._ids(before.format(question=question)) + [-1] * self.num_tokens
                + self._ids(after.format(question=question)))  # fmt: skip

    def target_ids(self, answer: str) -> list[int]:
        eos = self.tokenizer.eos_token_id
        return self._ids(self.answer_prefix + answer) + ([eos] if self.add_eos and eos is not None else [])

    # ------------------------------------------------------------------ forward pieces
    def point_tokens(self, points: Tensor) -> Tensor:
        """``[B, N, F]`` points -> ``[B, k, d]`` point tokens (float32 projector; no encoder graph when the
        encoder is frozen)."""
        if any(p.requires_grad for p in self.encoder.parameters()):
            x = self.encoder(points)
        else:
            with torch.no_grad():
                x = self.encoder(points)
        proj = self.projector
        return proj(x.to(proj.fc1.weight.dtype))

    def embed(self, seqs: Sequence[Sequence[int]], tokens: Tensor, *, left_pad: bool = False
              ) -> tuple[Tensor, Tensor]:
        """``inputs_embeds [B, L, d]`` and ``attention_mask [B, L]`` of id sequences whose ``-1`` positions
        receive the rows of ``tokens [B, k, d]`` (padded on the right, or the left for generation)."""
        b, width = len(seqs), max(1, max(len(s) for s in seqs))
        device = tokens.device
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, s in enumerate(seqs):
            sl = slice(width - len(s), width) if left_pad else slice(0, len(s))
            ids[i, sl] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, sl] = 1
        ids, mask = ids.to(device), mask.to(device)
        slots = ids < 0
        if int(slots.sum()) != tokens.shape[0] * tokens.shape[1]:
            raise ValueError(f"PointLLM: {int(slots.sum())} point-token slots for {tuple(tokens.shape[:2])} tokens")
        table = self.lm.get_input_embeddings()
        embeds = table(ids.clamp_min(0))
        embeds = embeds.masked_scatter(slots.unsqueeze(-1), tokens.to(embeds.dtype))
        return embeds, mask

    def training_inputs(self, points: Tensor, questions: Sequence[str], answers: Sequence[str]
                        ) -> dict[str, Tensor]:
        """``inputs_embeds``, ``attention_mask`` and ``labels`` (``-100`` except the answer tokens + EOS)."""
        if not (len(questions) == len(answers) == points.shape[0]):
            raise ValueError(f"PointLLM: {points.shape[0]} point clouds, {len(questions)} questions, "
                             f"{len(answers)} answers")  # fmt: skip
        prompts = [self.prompt_ids(q) for q in questions]
        targets = [self.target_ids(a) for a in answers]
        embeds, mask = self.embed([p + t for p, t in zip(prompts, targets)], self.point_tokens(points))
        labels = torch.full(mask.shape, -100, dtype=torch.long, device=mask.device)
        for i, (p, t) in enumerate(zip(prompts, targets)):
            labels[i, len(p) : len(p) + len(t)] = torch.as_tensor(t, device=mask.device)
        return {"inputs_embeds": embeds, "attention_mask": mask, "labels": labels}

    def loss(self, points: Tensor, questions: Sequence[str], answers: Sequence[str]) -> Tensor:
        """Mean cross-entropy over the answer tokens (logits computed at those positions only)."""
        inputs = self.training_inputs(points, questions, answers)
        keep, _ = answer_positions(inputs["labels"])
        out = self.lm(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
                      logits_to_keep=keep, use_cache=False)  # fmt: skip
        return answer_lm_loss(out.logits, inputs["labels"])

    def forward(self, points: Tensor, questions: Sequence[str], answers: Sequence[str]) -> Tensor:
        return self.loss(points, questions, answers)

    @torch.no_grad()
    def generate_ids(self, points: Tensor, questions: Sequence[str], *, max_new_tokens: int = 8,
                     **generate_kwargs: Any) -> Tensor:
        """New token ids ``[B, n]`` from ``lm.generate`` on the left-padded prompts (greedy unless
        ``generate_kwargs`` say otherwise, e.g. ``num_beams``); rows that stop early are padded."""
        embeds, mask = self.embed([self.prompt_ids(q) for q in questions], self.point_tokens(points), left_pad=True)
        kwargs = {"do_sample": False, "eos_token_id": self.tokenizer.eos_token_id, "pad_token_id": self.pad_id,
                  **generate_kwargs}  # fmt: skip
        return self.lm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=int(max_new_tokens),
                                **kwargs)  # fmt: skip

    def generate(self, points: Tensor, questions: Sequence[str], *, max_new_tokens: int = 8,
                 **generate_kwargs: Any) -> list[str]:
        """Generated answers (:meth:`generate_ids` decoded, special tokens removed)."""
        ids = self.generate_ids(points, questions, max_new_tokens=max_new_tokens, **generate_kwargs)
        return [s.strip() for s in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


# ============================================================================ building
def load_point_llm(encoder: Any, lm: str | os.PathLike, *, encoder_weights: Optional[str] = None,
                   dtype: Any = None, **kwargs: Any) -> PointLLM:
    """A :class:`PointLLM` from an encoder (a model spec for :func:`spikelight.models.build_model`, or a
    module; ``None``: the spec recorded in ``encoder_weights``), SVL weights for it (an SVL / PointClassify
    checkpoint, a Rep-VLI deploy folder or a state_dict file, loaded exactly) and a local Hugging Face
    causal-LM folder (``dtype``: e.g. ``torch.bfloat16`` for the LM). ``kwargs``: :class:`PointLLM`."""
    from spikelight.hf import load_hf_model, load_hf_tokenizer, resolve_local_model
    from spikelight.models import build_model

    path = resolve_local_model(lm)
    if encoder is None:
        if encoder_weights is None:
            raise ValueError("load_point_llm: give an encoder spec or encoder_weights that record one")
        from spikelight.models.pretrained import pretrained_encoder_spec

        encoder = pretrained_encoder_spec(encoder_weights)
    enc = build_model(encoder)
    if encoder_weights is not None:
        from spikelight.models.pretrained import load_pretrained_encoder

        load_pretrained_encoder(enc, encoder_weights)
    model_kwargs = {"dtype": dtype} if dtype is not None else {}
    causal = load_hf_model(path, cls="AutoModelForCausalLM", **model_kwargs).eval()
    tok = load_hf_tokenizer(path)
    if tok.eos_token_id is None:
        raise ValueError(f"{path}: the tokenizer has no EOS token (generation could not stop)")
    return PointLLM(enc, causal, tok, source=str(path), **kwargs)


def build_tiny_lm(out_dir: str | os.PathLike, *, words: Iterable[str] = (), seed: int = 0, hidden: int = 64,
                  layers: int = 2, heads: int = 4, kv_heads: int = 2, intermediate: Optional[int] = None,
                  max_position_embeddings: int = 512) -> Path:
    """Write a tiny random LLaMA causal LM with the tiny VLMs' word-level tokenizer
    (:func:`spikelight.models.vlm.tiny.build_tiny_tokenizer`, no visual tokens; vocabulary = its base words +
    ``words`` + the template words) as a local HF folder; returns the folder.

    LLaMA, not Qwen2: ``transformers`` 5 loads the tokenizer of a ``qwen2`` folder as ``Qwen2Tokenizer``
    whatever the folder says, and its byte-level pre-tokenizer breaks a word-level vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from spikelight.models.vlm.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer(None, [*words, *PROMPT_WORDS])
    cfg = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, intermediate_size=intermediate or 2 * hidden,
                      vocab_size=len(tok), max_position_embeddings=max_position_embeddings,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      tie_word_embeddings=False)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def save_encoder_checkpoint(encoder: nn.Module, path: str | os.PathLike, spec: Any = None) -> Path:
    """Save an encoder as an SVL-style checkpoint (``state_dict`` with the ``encoder.`` prefix, the spec in
    ``hyper_parameters.encoder_spec``): what :func:`spikelight.models.pretrained.load_pretrained_encoder`
    and :func:`~spikelight.models.pretrained.pretrained_encoder_spec` read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"encoder.{k}": v.detach().cpu() for k, v in encoder.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"encoder_spec": spec}}, path)
    return path


# ============================================================================ whole training of a tiny model
def pretrain_point_llm(model: PointLLM, dataset: Any, *, steps: int, batch_size: int = 32, lr: float = 2e-3,
                       weight_decay: float = 0.0, warmup: float = 0.05, clip_grad: Optional[float] = None,
                       mode: str = "all", seed: int = 0, log_every: int = 50, log: Any = print) -> list[float]:
    """Train ``model`` (``mode`` of :meth:`PointLLM.set_trainable`: ``"all"`` = encoder, projector and LM;
    ``"align_lm"`` = projector and LM on a frozen encoder) on a QA dataset (items with ``points``,
    ``question``, ``answer``): AdamW, linear warmup + cosine, answer-only loss (``clip_grad``: clip the
    global gradient norm). Returns the loss of every step; leaves ``model`` frozen and in eval mode."""
    model.set_trainable(mode).train()
    device = next(model.parameters()).device

    def batch_loss(rng: random.Random) -> Tensor:
        items = [dataset[rng.randrange(len(dataset))] for _ in range(batch_size)]
        points = torch.stack([torch.as_tensor(it["points"]) for it in items]).to(device)
        return model.loss(points, [it["question"] for it in items], [it["answer"] for it in items])

    losses = train_steps([p for p in model.parameters() if p.requires_grad], steps, batch_loss, lr=lr,
                         weight_decay=weight_decay, warmup=warmup, clip_grad=clip_grad, seed=seed, log=log,
                         log_every=log_every, label=f"base point LLM ({mode})")
    model.set_trainable("none").eval()
    return losses


def pretrain_encoder(encoder: nn.Module, dataset: Any, label_sizes: dict[str, int], *, steps: int,
                     batch_size: int = 32, lr: float = 3e-3, seed: int = 0, log_every: int = 100,
                     log: Any = print) -> list[float]:
    """Supervised stand-in for SVL pretraining: train ``encoder`` with one linear head per attribute
    (``label_sizes``: name -> classes) on its global embedding, cross-entropy summed over attributes
    (label ``-1`` = not applicable). ``dataset[i]`` gives ``points``; ``dataset.records[i]["labels"]`` the
    ``{name: class}`` labels. AdamW + cosine. Returns the loss of every step; leaves ``encoder`` in eval mode
    (the heads are dropped)."""
    heads = nn.ModuleDict({k: nn.Linear(_embed_dim(encoder), int(n)) for k, n in label_sizes.items()})
    params = [*encoder.parameters(), *heads.parameters()]
    encoder.requires_grad_(True).train()
    device = next(encoder.parameters()).device

    def batch_loss(rng: random.Random) -> Tensor:
        idx = [rng.randrange(len(dataset)) for _ in range(batch_size)]
        points = torch.stack([torch.as_tensor(dataset[i]["points"]) for i in idx]).to(device)
        x = encoder(points)
        loss = x.new_zeros(())
        for name, head in heads.items():
            y = torch.as_tensor([int(dataset.records[i]["labels"].get(name, -1)) for i in idx], device=device)
            if bool((y >= 0).any()):
                loss = loss + nn.functional.cross_entropy(head(x), y, ignore_index=-1)
        return loss

    losses = train_steps(params, steps, batch_loss, lr=lr, seed=seed, log=log, log_every=log_every,
                         label="base encoder (attribute heads)")
    encoder.requires_grad_(False).eval()
    return losses


def ensure_base_point_llm(folder: str | os.PathLike, dataset: Any, *, encoder: Any, words: Sequence[str] = (),
                          label_sizes: Optional[dict[str, int]] = None, encoder_steps: int = 300, steps: int = 300,
                          batch_size: int = 32, lr: float = 3e-3, seed: int = 0, num_tokens: int = 4,
                          data_stamp: Any = None, lm_options: Optional[dict] = None, log: Any = print) -> Path:
    """The base model of the synthetic default, trained once and cached in ``folder``, in two stages that
    stand in for what a real setup downloads:

    1. the encoder (spec ``encoder``): :func:`pretrain_encoder` for ``encoder_steps`` steps on the records'
       attribute labels (``label_sizes``) - the stand-in for SVL pretraining, saved as an SVL-style
       checkpoint ``folder/encoder.ckpt``;
    2. a tiny causal LM (:func:`build_tiny_lm`, ``lm_options``, vocabulary ``words``) trained with a
       projector of ``num_tokens`` tokens on the frozen encoder for ``steps`` steps (:func:`pretrain_point_llm`,
       ``mode="align_lm"``): an LM that knows the synthetic language, saved in HF format to ``folder/lm``
       (the projector is dropped: the downstream task learns its own).

    ``steps = encoder_steps = 0``: random weights (smoke tests). ``folder/spikelight_pretrain.json`` holds
    every setting (and ``data_stamp``, what identifies the data); the same settings reuse the folder, others
    retrain (written to a temp folder, then renamed); a stage-1 encoder with the same settings is reused."""
    from spikelight.models import build_model

    folder = Path(folder).expanduser()
    enc_stamp = json.loads(json.dumps({"encoder": encoder, "label_sizes": dict(label_sizes or {}),
                                       "encoder_steps": int(encoder_steps), "batch_size": int(batch_size),
                                       "lr": float(lr), "seed": int(seed), "data": data_stamp}))  # fmt: skip
    stamp = {"encoder_stage": enc_stamp, **json.loads(json.dumps({
        "words": list(dict.fromkeys(words)), "steps": int(steps), "num_tokens": int(num_tokens),
        "lm_options": dict(lm_options or {})}))}  # fmt: skip
    stamp_file = folder / "spikelight_pretrain.json"
    old = json.loads(stamp_file.read_text()) if stamp_file.is_file() else {}
    if {k: v for k, v in old.items() if k != "seconds"} == stamp:
        return folder
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build_tiny_lm(tmp / "lm", words=stamp["words"], seed=seed, **(lm_options or {}))
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = build_model(encoder)
        if old.get("encoder_stage") == enc_stamp and (folder / "encoder.ckpt").is_file():  # stage 1 is cached
            from spikelight.models.pretrained import load_pretrained_encoder

            load_pretrained_encoder(enc, folder / "encoder.ckpt")
            if log is not None:
                log(f"base model 1/2: encoder reused from {folder / 'encoder.ckpt'} (same settings)")
        elif encoder_steps > 0:
            if not label_sizes:
                raise ValueError("ensure_base_point_llm: encoder_steps > 0 needs label_sizes")
            if log is not None:
                log(f"base model 1/2: encoder on the attribute labels of {len(dataset)} records ({encoder_steps} "
                    f"steps) -> {folder / 'encoder.ckpt'}")
            pretrain_encoder(enc, dataset, label_sizes, steps=encoder_steps, batch_size=batch_size, lr=lr, seed=seed,
                             log=log)  # fmt: skip
        torch.manual_seed(seed + 1)  # stage 2 starts from the same RNG state whether stage 1 ran or was reused
        model = load_point_llm(enc, tmp / "lm", num_tokens=num_tokens)
        if steps > 0:
            if log is not None:
                log(f"base model 2/2: tiny LM + projector on the frozen encoder, {len(dataset)} QA records ({steps} "
                    f"steps) -> {folder / 'lm'}")
            pretrain_point_llm(model, dataset, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                               mode="align_lm", log=log)  # fmt: skip
    model.lm.save_pretrained(tmp / "lm")
    save_encoder_checkpoint(model.encoder, tmp / "encoder.ckpt", spec=encoder)
    stamp["seconds"] = round(time.perf_counter() - t0, 1)
    (tmp / "spikelight_pretrain.json").write_text(json.dumps(stamp, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)
    return folder
