"""Procedural videos for LVC's embedded default: brief events in short training clips and in long, held-out
evaluation videos, written as real mp4 files (H.264 through PyAV) with their manifests.

Every video is a dim, static scene (a grey background with a few dim rectangles) in which brief **events**
happen at random times:

* a **flash**: the whole frame turns one bright colour (red, green, blue or yellow) for 1-2 frames;
* a **move**: a white square crosses part of the frame for 2 frames, drawn with a fading motion trail, so
  each of its frames shows the direction (left, right, up or down).

Four question kinds (``task_type``), four options each (chance 25%):

==========  =======================================  ==============================================
kind        question                                 events
==========  =======================================  ==============================================
``colour``  ``what colour flashed ?``                one flash (+ maybe a move)
``motion``  ``which way did the object move ?``      one move (+ maybe a flash)
``order``   ``which colour flashed first ?``         two flashes of different colours (+ maybe a move)
``count``   ``how many times did it flash ?``        1-4 flashes (answers ``1`` .. ``4``)
==========  =======================================  ==============================================

Events never overlap and start at least ``min_gap`` frames after the previous one ended, so two events
never share a window of ``min_gap`` consecutive frames (``min_gap = 3`` keeps one-frame flashes in
different LVC windows of ``w = 4``; they are separate events, not one).

:func:`generate_lvc_synthetic` writes, under ``<cache_dir>/<hash of the parameters>/``::

    train/*.mp4, train.jsonl        short clips (``short_frames`` frames): JSONL pairs {video, prompt, answer,
                                    task_type, events}; a clip with a second event kind also asks about it
    val_short/*.mp4, val_short.jsonl  more short clips, as MCQ JSONL (``write_mcq_jsonl``; same distribution)
    long/*.mp4, long.jsonl          held-out long videos (``long_frames`` frames, other seeds, one-frame
                                    flashes at random places): MCQ JSONL with task_type + duration class
    info.json                       the parameters and counts

The MCQ items keep their events in ``extra["events"]`` (``start``, ``length``, ``kind``, ``colour`` /
``direction``) so tests can check the rendered frames against the answers. Everything is cached: the same
parameters reuse the folder (written atomically: a temp folder renamed).

At the native ``fps`` every frame is sampled ("dense"); ``fps / w`` samples every ``w``-th frame ("sparse",
the centre of each group of ``w``), which sees a one-frame flash with probability ``1 / w``.
:class:`SyntheticVideoDataModule` generates on first use and serves the files like
:class:`~spikelight.datamodules.video.mcq.VideoMCQDataModule` (train pairs for ``fit``; ``long`` and
``short`` MCQ sets for validation).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spikelight.datamodules.video.base import VideoSampling
from spikelight.datamodules.video.io import decode_frames, frame_times, write_video
from spikelight.datamodules.video.mcq import MCQItem, VideoMCQDataModule, write_mcq_jsonl
from spikelight.datamodules.video.pairs import write_jsonl

__all__ = ["COLOURS", "DIRECTIONS", "KINDS", "QUESTIONS", "OPTIONS", "SYNTHETIC_WORDS", "Event", "Scenario",
           "make_scenario", "render_video", "generate_lvc_synthetic", "LVCSyntheticData", "OneThreadSampling",
           "SyntheticVideoDataModule",
           "GENERATOR_VERSION"]

GENERATOR_VERSION = 1

#: flash colours (RGB) - bright and saturated, far from the dim scene
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30), "green": (30, 205, 40), "blue": (35, 70, 235), "yellow": (235, 220, 35),
}
#: unit steps (dy, dx) of a move per direction
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
KINDS = ("colour", "motion", "order", "count")
QUESTIONS = {
    "colour": "what colour flashed ?",
    "motion": "which way did the object move ?",
    "order": "which colour flashed first ?",
    "count": "how many times did it flash ?",
}
OPTIONS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS), "motion": tuple(DIRECTIONS), "order": tuple(COLOURS), "count": ("1", "2", "3", "4"),
}
#: every word of the questions and answers (the tiny VLM's tokenizer must know them)
SYNTHETIC_WORDS: tuple[str, ...] = tuple(dict.fromkeys(
    w for text in (*QUESTIONS.values(), *(o for opts in OPTIONS.values() for o in opts)) for w in text.split()
))

_OBJECT = 10  # side of the moving square (pixels at size 64; scaled with the frame)
_STEP = 6  # pixels per frame of a move (at size 64)
_TRAIL = (0.3, 0.6, 1.0)  # intensities of the motion trail, tail to head


@dataclass(frozen=True)
class Event:
    """One event: ``kind`` "flash" (``colour``) or "move" (``direction``), frames ``[start, start + length)``;
    a move also has its first head position ``y``, ``x`` (top-left of the square, pixels)."""

    kind: str
    start: int
    length: int
    colour: str = ""
    direction: str = ""
    y: int = 0
    x: int = 0

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v != "" and not (k in ("y", "x") and self.kind != "move")}


@dataclass(frozen=True)
class Scenario:
    """A video's events and its questions: ``(task_type, question, options, answer_index)`` (the first is the
    video's own kind; a second kind of event present adds its question)."""

    events: tuple[Event, ...]
    questions: tuple[tuple[str, str, tuple[str, ...], int], ...]


def _place(lengths: list[int], num_frames: int, min_gap: int, rng: np.random.Generator) -> list[int] | None:
    """Random starts for events of ``lengths`` (in this order) in ``num_frames`` frames, at least ``min_gap``
    free frames between two events; ``None`` when they do not fit."""
    need = sum(lengths) + min_gap * (len(lengths) - 1)
    slack = num_frames - need
    if slack < 0:
        return None
    cuts = np.sort(rng.integers(0, slack + 1, size=len(lengths)))  # a random split of the slack
    starts, t = [], 0
    for i, n in enumerate(lengths):
        gap = int(cuts[i] - (cuts[i - 1] if i else 0))
        t += gap
        starts.append(t)
        t += n + min_gap
    return starts


def _move(start: int, length: int, size: int, rng: np.random.Generator) -> Event:
    direction = str(rng.choice(list(DIRECTIONS)))
    obj, step = max(2, _OBJECT * size // 64), max(1, _STEP * size // 64)
    dy, dx = DIRECTIONS[direction]
    span = step * (length - 1 + len(_TRAIL))  # the trail and the head stay inside the frame
    lo_y, hi_y = (span, size - obj) if dy < 0 else (0, size - obj - (span if dy > 0 else 0))
    lo_x, hi_x = (span, size - obj) if dx < 0 else (0, size - obj - (span if dx > 0 else 0))
    return Event("move", start, length, direction=direction, y=int(rng.integers(lo_y, hi_y + 1)),
                 x=int(rng.integers(lo_x, hi_x + 1)))


def make_scenario(kind: str, num_frames: int, rng: np.random.Generator, *, flash_frames: tuple[int, int] = (1, 2),
                  move_frames: int = 2, min_gap: int = 3, distractor: float = 0.5, size: int = 64) -> Scenario:
    """The events and questions of one video of ``kind`` (see the module docstring). ``flash_frames``: the
    (min, max) length of a flash; ``distractor``: probability of one event of the other family."""
    if kind not in KINDS:
        raise ValueError(f"unknown question kind {kind!r}; choose from {KINDS}")
    colours = list(COLOURS)
    if kind == "colour":
        main = [("flash", str(rng.choice(colours)))]
    elif kind == "order":
        a, b = rng.choice(len(colours), size=2, replace=False)
        main = [("flash", colours[a]), ("flash", colours[b])]
    elif kind == "count":
        main = [("flash", str(rng.choice(colours))) for _ in range(int(rng.integers(1, 5)))]
    else:
        main = [("move", "")]
    extra = []
    if rng.random() < distractor:
        extra = [("flash", str(rng.choice(colours)))] if kind == "motion" else [("move", "")]
    lo, hi = flash_frames

    def lengths_of(specs, short=False):
        return [move_frames if k == "move" else (lo if short else int(rng.integers(lo, hi + 1))) for k, _ in specs]

    # the distractor goes anywhere among the main events (the order of the main flashes is kept)
    specs = list(main)
    if extra:
        specs.insert(int(rng.integers(0, len(main) + 1)), extra[0])
    lengths = lengths_of(specs)
    starts = _place(lengths, num_frames, min_gap, rng)
    if starts is None and extra:  # too many events for this clip: drop the distractor
        specs, extra = list(main), []
        lengths = lengths_of(specs)
        starts = _place(lengths, num_frames, min_gap, rng)
    if starts is None:  # still too many: the shortest flashes
        lengths = lengths_of(specs, short=True)
        starts = _place(lengths, num_frames, min_gap, rng)
    if starts is None:
        raise ValueError(f"{len(specs)} events of a {kind!r} video do not fit in {num_frames} frames")
    events = tuple(_move(s, n, size, rng) if k == "move" else Event("flash", s, n, colour=c)
                   for (k, c), s, n in zip(specs, starts, lengths))
    return Scenario(events, tuple(_questions(kind, events)))


def _questions(kind: str, events: tuple[Event, ...]):
    flashes = [e for e in events if e.kind == "flash"]
    moves = [e for e in events if e.kind == "move"]
    kinds = [kind]
    if kind != "motion" and moves:
        kinds.append("motion")
    if kind == "motion" and len(flashes) == 1:
        kinds.append("colour")
    out = []
    for k in kinds:
        if k in ("colour", "order"):
            answer = flashes[0].colour
        elif k == "count":
            answer = str(len(flashes))
        else:
            answer = moves[0].direction
        out.append((k, QUESTIONS[k], OPTIONS[k], OPTIONS[k].index(answer)))
    return out


def _scene(size: int, rng: np.random.Generator) -> np.ndarray:
    """A dim static scene: grey background and 2-4 dim rectangles (no value above 110)."""
    g = int(rng.integers(20, 70))
    img = np.full((size, size, 3), g, dtype=np.int32)
    for _ in range(int(rng.integers(2, 5))):
        h, w = (int(v) for v in rng.integers(size // 8, size // 2, size=2))
        y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
        img[y:y + h, x:x + w] = np.clip(g + rng.integers(-15, 40, size=3), 0, 110)
    return img.astype(np.uint8)


def render_video(events: tuple[Event, ...] | list[Event], num_frames: int, *, size: int = 64,
                 rng: np.random.Generator | None = None, scene: np.ndarray | None = None) -> np.ndarray:
    """uint8 frames ``[num_frames, size, size, 3]`` of a dim static scene with ``events`` drawn in."""
    rng = rng if rng is not None else np.random.default_rng(0)
    base = _scene(size, rng) if scene is None else scene
    frames = np.repeat(base[None], num_frames, axis=0)
    obj, step = max(2, _OBJECT * size // 64), max(1, _STEP * size // 64)
    for ev in events:
        if ev.kind == "flash":
            frames[ev.start:ev.start + ev.length] = np.asarray(COLOURS[ev.colour], dtype=np.uint8)
            continue
        dy, dx = DIRECTIONS[ev.direction]
        for j in range(ev.length):
            f = frames[ev.start + j].astype(np.float32)
            for k, a in enumerate(_TRAIL):  # tail first, the head (full white) last
                y = ev.y + dy * step * (j + k)
                x = ev.x + dx * step * (j + k)
                f[y:y + obj, x:x + obj] = (1 - a) * f[y:y + obj, x:x + obj] + a * 240.0
            frames[ev.start + j] = np.clip(f, 0, 255).astype(np.uint8)
    return frames


@dataclass(frozen=True)
class LVCSyntheticData:
    """Where :func:`generate_lvc_synthetic` wrote a data set: ``root`` and its manifests."""

    root: Path
    train: Path  # JSONL pairs (short clips)
    val_short: Path  # MCQ JSONL (short clips)
    long: Path  # MCQ JSONL (held-out long videos)
    info: dict[str, Any]


def _params(**kw: Any) -> dict[str, Any]:
    defaults = dict(num_train=480, num_val_short=64, num_long=96, short_frames=16, long_frames=64, size=64, fps=8.0,
                    train_flash_frames=(1, 2), long_flash_frames=(1, 1), move_frames=2, min_gap=3, distractor=0.5,
                    seed=0, crf=20)
    unknown = set(kw) - set(defaults)
    if unknown:
        raise TypeError(f"unknown generator parameter(s) {sorted(unknown)}")
    p = {**defaults, **kw}
    p["train_flash_frames"], p["long_flash_frames"] = list(p["train_flash_frames"]), list(p["long_flash_frames"])
    if p["size"] % 2 or p["size"] < 16:
        raise ValueError(f"size must be even and >= 16, got {p['size']}")
    return p


def _write_split(folder: Path, name: str, count: int, num_frames: int, seed: int, p: dict[str, Any],
                 flash_frames: tuple[int, int], as_pairs: bool) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    (folder / name).mkdir(parents=True, exist_ok=True)
    duration = num_frames / float(p["fps"])
    dclass = "long" if name == "long" else "short"
    records: list[dict[str, Any]] = []
    for i in range(count):
        kind = KINDS[i % len(KINDS)]  # balanced kinds
        sc = make_scenario(kind, num_frames, rng, flash_frames=flash_frames, move_frames=p["move_frames"],
                           min_gap=p["min_gap"], distractor=p["distractor"], size=p["size"])
        rel = f"{name}/{name}_{i:05d}.mp4"
        write_video(folder / rel, render_video(sc.events, num_frames, size=p["size"], rng=rng), fps=p["fps"],
                    crf=p["crf"])
        events = [e.to_json() for e in sc.events]
        questions = sc.questions if as_pairs else sc.questions[:1]
        for q, (task, text, options, ans) in enumerate(questions):
            if as_pairs:
                records.append({"video": rel, "prompt": text, "answer": options[ans], "task_type": task,
                                "events": events})
            else:
                records.append(MCQItem(video=rel, question=text, options=options, answer_index=ans, task_type=task,
                                       duration=duration, duration_class=dclass, qid=f"{name}_{i:05d}_{q}",
                                       source=f"synthetic_{name}", extra={"events": events}))
    return records


def generate_lvc_synthetic(cache_dir: str | os.PathLike | None = None, **params: Any) -> LVCSyntheticData:
    """Generate (or reuse) the synthetic LVC data under ``cache_dir/<hash of params>`` (default cache:
    ``~/.cache/spikelight/synthetic_lvc``). ``params``: ``num_train`` / ``num_val_short`` / ``num_long``
    videos, ``short_frames`` / ``long_frames``, ``size`` (pixels, even), ``fps``, ``train_flash_frames`` /
    ``long_flash_frames`` ((min, max) flash length), ``move_frames``, ``min_gap``, ``distractor``, ``seed``,
    ``crf``. Train, short validation and long videos use different seeds (``seed``, ``seed + 1``,
    ``seed + 2``)."""
    p = _params(**params)
    digest = hashlib.sha1(json.dumps({**p, "version": GENERATOR_VERSION}, sort_keys=True).encode()).hexdigest()[:16]
    base = Path(cache_dir).expanduser() if cache_dir is not None else Path.home() / ".cache/spikelight/synthetic_lvc"
    root = base / digest
    files = {k: root / f"{k}.jsonl" for k in ("train", "val_short", "long")}
    if not (root / "info.json").is_file():
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
        os.chmod(tmp, 0o755)
        try:
            s = p["seed"]
            train = _write_split(tmp, "train", p["num_train"], p["short_frames"], s, p, p["train_flash_frames"], True)
            write_jsonl(tmp / "train.jsonl", train)
            val = _write_split(tmp, "val_short", p["num_val_short"], p["short_frames"], s + 1, p,
                               p["train_flash_frames"], False)
            write_mcq_jsonl(tmp / "val_short.jsonl", val)
            long = _write_split(tmp, "long", p["num_long"], p["long_frames"], s + 2, p, p["long_flash_frames"], False)
            write_mcq_jsonl(tmp / "long.jsonl", long)
            info = {**p, "version": GENERATOR_VERSION, "counts": {"train_pairs": len(train), "val_short": len(val),
                                                                   "long": len(long)}}
            (tmp / "info.json").write_text(json.dumps(info, indent=1))
            try:
                os.replace(tmp, root)
            except OSError:  # another process finished first
                if not (root / "info.json").is_file():
                    shutil.rmtree(root, ignore_errors=True)
                    os.replace(tmp, root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    info = json.loads((root / "info.json").read_text())
    return LVCSyntheticData(root, files["train"], files["val_short"], files["long"], info)


@dataclass(frozen=True)
class OneThreadSampling(VideoSampling):
    """:class:`VideoSampling` decoding with ``threads`` FFmpeg threads (1: about 3x faster than FFmpeg's
    default threading on tiny clips, where starting the decoder threads costs more than the decoding)."""

    threads: int = 1

    def decode(self, path):
        idx = self.indices(frame_times(path))
        return decode_frames(path, idx, strategy=self.strategy, seek_min_skip=self.seek_min_skip, size=self.size,
                             threads=self.threads)


class SyntheticVideoDataModule(VideoMCQDataModule):
    """The synthetic LVC data (generated on first use, then cached) served as video-text pairs for ``fit`` and
    two MCQ evaluation sets: ``long`` (held-out long videos; logged as ``val/...``) and ``short`` (held-out
    short clips; ``val_short/...``).

    Args:
        cache_dir: where generated data sets live (default ``~/.cache/spikelight/synthetic_lvc``).
        generator: :func:`generate_lvc_synthetic` parameters (``num_train``, ``long_frames`` ...).
        eval_sets: which MCQ sets to evaluate, in order (``"long"``, ``"short"``).
        fps / num_frames ...: frame sampling (:class:`~spikelight.datamodules.video.base.VideoDataModule`):
            ``fps: 8`` (the videos' rate) samples every frame, ``fps: 2`` every 4th.
        image_size: frames are resized to it (the tiny VLM's 64 px by default); ``processor``: a VLM folder
            whose processor to use instead.
        base_vlm: a folder for the base model of the synthetic default: ``prepare_data`` trains a tiny InternVL
            whole on the training clips and saves it there unless the folder already holds one trained with
            the same settings (:func:`spikelight.tasks.vlm_pretrain.ensure_base_vlm`); point the task's
            ``vlm`` at the same folder. ``None``: nothing is trained here.
        base_vlm_steps / base_vlm_options: its training steps (``0``: the random tiny model, for smoke tests)
            and other settings (``batch_size``, ``lr``, ``seed``, sizes such as ``patch_size``, ``text_hidden``).
    """

    def __init__(self, *, cache_dir: str | None = None, generator: dict[str, Any] | None = None,
                 eval_sets: list[str] | tuple[str, ...] = ("long", "short"), num_frames: int | None = None,
                 fps: float | None = 8.0, image_size: int = 64, base_vlm: str | None = None,
                 base_vlm_steps: int = 400, base_vlm_options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        sets = [str(s) for s in eval_sets]
        bad = [s for s in sets if s not in ("long", "short")]
        if bad or not sets:
            raise ValueError(f"eval_sets must name 'long' and / or 'short', got {list(eval_sets)}")
        super().__init__(annotations={s: s for s in sets}, format="mcq", num_frames=num_frames, fps=fps,
                         image_size=image_size, **kwargs)
        self.sampling = OneThreadSampling(**{k: getattr(self.sampling, k) for k in VideoSampling.__dataclass_fields__})
        self.cache_dir, self.generator_params = cache_dir, dict(generator or {})
        _params(**self.generator_params)  # bad parameters fail at instantiation
        self._generated: LVCSyntheticData | None = None
        self.base_vlm, self.base_vlm_steps = base_vlm, int(base_vlm_steps)
        self.base_vlm_options = dict(base_vlm_options or {})

    @property
    def data(self) -> LVCSyntheticData:
        """The generated data set (generated now if needed)."""
        if self._generated is None:
            self._generated = generate_lvc_synthetic(self.cache_dir, **self.generator_params)
            g = self._generated
            files = {"long": str(g.long), "short": str(g.val_short)}
            self.annotations = {name: files[name] for name in self.annotations}
            self.train_manifest = str(g.train)
        return self._generated

    def prepare_data(self) -> None:
        """Generate the videos (once) and, with ``base_vlm``, train / reuse the base model."""
        data = self.data
        if self.base_vlm is not None:
            from spikelight.tasks.vlm_pretrain import ensure_base_vlm

            ensure_base_vlm(self.base_vlm, data.train, steps=self.base_vlm_steps, words=SYNTHETIC_WORDS,
                            image_size=self.image_size, **self.base_vlm_options)

    def split_items(self, split: str):
        self.data  # noqa: B018
        return super().split_items(split)
