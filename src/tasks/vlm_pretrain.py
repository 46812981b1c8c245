"""Whole-VLM training of a tiny model on video-text pairs: the base model of LVC's synthetic default.

LVC assumes a VLM that already understands videos and the language of the questions; it then freezes it
and tunes only the alignment layer. A tiny random VLM knows nothing, so the synthetic default first trains
one WHOLE (vision tower, projector, LLM) on the short training clips, every frame, no compression, with the
same prompts :class:`~spikelight.tasks.lvc_align.LVCAlign` builds (``PAIR_TEMPLATE``, target
``" {answer}</s>"``, loss on the answer tokens only), and saves it as a local Hugging Face folder that
``LVCAlign(vlm=<folder>)`` loads::

    from spikelight.tasks.vlm_pretrain import ensure_base_vlm
    folder = ensure_base_vlm("runs/lvc_synthetic_base/vlm", "<data>/train.jsonl", steps=400)

:func:`ensure_base_vlm` is cached: the folder holds ``spikelight_pretrain.json`` (every setting + the
manifest's folder); the same settings reuse it, others retrain. ``steps=0`` saves the random tiny model
(tests). :class:`~spikelight.datamodules.video.synthetic.SyntheticVideoDataModule` calls it in
``prepare_data`` when its ``base_vlm`` is set, so ``spikelight fit --config experiments/lvc/synthetic.yaml``
needs no separate step.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from spikelight.optim import train_steps

__all__ = ["PROMPT_WORDS", "pair_inputs", "collate_inputs", "pretrain_vlm", "ensure_base_vlm", "load_clips"]

#: the words of LVCAlign's prompt templates (the tiny word-level tokenizer must know them)
PROMPT_WORDS = ("Answer:", "Question:", "Options:", "A.", "B.", "C.", "D.", "Subtitles:")


def pair_inputs(vlm: Any, num_frames: int, prompt: str, answer: str | None = None, *,
                template: str | None = None, answer_prefix: str = " ") -> tuple[list[int], list[int]]:
    """Token ids and labels of one pair as :class:`~spikelight.tasks.lvc_align.LVCAlign` builds them: the
    template's text before ``{visual}``, the placeholders of ``num_frames`` frames, the text after it, then
    ``answer_prefix + answer`` and EOS (labels ``-100`` except the answer and EOS)."""
    from spikelight.tasks.lvc_align import PAIR_TEMPLATE

    tok = vlm.tokenizer
    before, after = (template or PAIR_TEMPLATE).split("{visual}")

    def ids(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []

    with_sp, without = tok("a")["input_ids"], tok("a", add_special_tokens=False)["input_ids"]
    k = len(with_sp) - len(without)
    bos = list(with_sp[:k]) if k > 0 and list(with_sp[k:]) == list(without) else []
    fields = {"prompt": prompt, "subtitles": ""}
    head = bos + ids(before.format(**fields)) + ids(vlm.visual_prompt(num_frames)) + ids(after.format(**fields))
    if answer is None:
        return head, [-100] * len(head)
    target = ids(answer_prefix + answer) + ([tok.eos_token_id] if tok.eos_token_id is not None else [])
    return head + target, [-100] * len(head) + target


def collate_inputs(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-padded ``input_ids``, ``attention_mask``, ``labels`` ``[B, L]``."""
    n = max(len(a) for a, _ in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, (a, b) in enumerate(rows):
        ids[i, : len(a)], labels[i, : len(b)], mask[i, : len(a)] = torch.tensor(a), torch.tensor(b), 1
    return ids, mask, labels


def load_clips(paths: Iterable[str], *, image_size: int = 64, transform: Any = None) -> torch.Tensor:
    """Every frame of each (equal-length) video, resized / normalised: float32 ``[N, M, 3, S, S]`` (the torch
    fallback transform of the video DataModules with ImageNet mean / std, unless ``transform`` is given)."""
    import numpy as np

    from spikelight.datamodules.video import FrameTransform, decode_frames, frame_times

    transform = transform or FrameTransform(image_size)
    # one decoder thread: faster than FFmpeg's threads on tiny clips
    clips = [transform(decode_frames(p, np.arange(len(frame_times(p))), threads=1).frames) for p in paths]
    lengths = {c.shape[0] for c in clips}
    if len(lengths) != 1:
        raise ValueError(f"load_clips: the videos have different frame counts {sorted(lengths)}")
    return torch.stack(clips)


def pretrain_vlm(vlm: Any, frames: torch.Tensor, pairs: Sequence[tuple[int, str, str]], *, steps: int,
                 batch_size: int = 16, lr: float = 2e-3, weight_decay: float = 0.0, warmup: float = 0.05,
                 seed: int = 0, log_every: int = 50, log: Any = print) -> list[float]:
    """Train the WHOLE VLM adapter ``vlm`` (every parameter) on ``pairs`` ``(clip index, prompt, answer)``
    over ``frames`` ``[N, M, 3, S, S]`` (every frame of each clip reaches the LLM): AdamW, linear warmup +
    cosine, gradient clipping at 1, answer-only loss. Returns the loss of every step; leaves ``vlm`` frozen
    and in eval mode."""
    vlm.set_trainable("all").train()
    m = int(frames.shape[1])
    pad = vlm.tokenizer.pad_token_id if vlm.tokenizer.pad_token_id is not None else 0

    def batch_loss(rng: random.Random) -> torch.Tensor:
        idx = [rng.randrange(len(pairs)) for _ in range(batch_size)]
        ids, mask, labels = collate_inputs([pair_inputs(vlm, m, pairs[i][1], pairs[i][2]) for i in idx], pad)
        return vlm(ids, mask, pixel_values=frames[[pairs[i][0] for i in idx]], labels=labels).loss

    losses = train_steps([p for p in vlm.parameters() if p.requires_grad], steps, batch_loss, lr=lr,
                         weight_decay=weight_decay, warmup=warmup, clip_grad=1.0, seed=seed, log=log,
                         log_every=log_every, label="base VLM (whole)")
    vlm.set_trainable("none").eval()
    return losses


def ensure_base_vlm(folder: str | os.PathLike, train_manifest: str | os.PathLike, *, steps: int = 400,
                    batch_size: int = 16, lr: float = 2e-3, seed: int = 0, words: Sequence[str] = (),
                    image_size: int = 64, log: Any = print, **sizes: Any) -> Path:
    """The base VLM folder: reused when its ``spikelight_pretrain.json`` matches these settings, else a tiny
    InternVL (:func:`~spikelight.models.vlm.build_tiny_vlm`, ``sizes``; vocabulary = ``words`` + the prompt
    words) trained whole for ``steps`` steps on the pairs of ``train_manifest`` and saved in HF format
    (written to a temp folder, then renamed)."""
    from spikelight.datamodules.video import read_pairs_jsonl
    from spikelight.models.vlm import build_tiny_vlm, load_vlm

    folder = Path(folder).expanduser()
    manifest = Path(train_manifest).expanduser().resolve()
    stamp = {"kind": "internvl", "manifest": str(manifest), "steps": int(steps), "batch_size": int(batch_size),
             "lr": float(lr), "seed": int(seed), "words": list(dict.fromkeys([*words, *PROMPT_WORDS])),
             "image_size": int(image_size), "sizes": dict(sorted(sizes.items()))}
    stamp_file = folder / "spikelight_pretrain.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return folder
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build_tiny_vlm("internvl", tmp, words=stamp["words"], seed=seed, image_size=image_size, **sizes)
    if steps > 0:
        items = read_pairs_jsonl(manifest)
        videos = list(dict.fromkeys(it.video for it in items))
        index = {v: i for i, v in enumerate(videos)}
        if log is not None:
            log(f"base VLM: training a tiny InternVL whole on {len(items)} pairs of {len(videos)} clips "
                f"({steps} steps) -> {folder}")
        frames = load_clips(videos, image_size=image_size)
        vlm = load_vlm(tmp)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pretrain_vlm(vlm, frames, [(index[it.video], it.prompt, it.answer) for it in items], steps=steps,
                         batch_size=batch_size, lr=lr, seed=seed, log=log)
        vlm.model.save_pretrained(tmp)
    (tmp / "spikelight_pretrain.json").write_text(json.dumps(stamp, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)
    return folder
