"""The synthetic LVC data: procedural videos written as real mp4 files whose answers are right (checked on the
decoded pixels, not on the generator's own event list), manifests read by the video package's loaders, the
cache, and the sparse / dense sampling the demo compares."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spikelight.datamodules.video import (
    VideoMCQDataModule,
    probe_video,
    read_mcq,
    read_pairs_jsonl,
    read_video,
)
from spikelight.datamodules.video.synthetic import (
    COLOURS,
    KINDS,
    OPTIONS,
    SYNTHETIC_WORDS,
    Event,
    SyntheticVideoDataModule,
    generate_lvc_synthetic,
    make_scenario,
    render_video,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(num_train=8, num_val_short=4, num_long=8, short_frames=16, long_frames=32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_lvc_synthetic(tmp_path_factory.mktemp("lvc_syn"), **SMALL)


# -- pixel-level detectors (independent of the generator's event list) --------------------------------------
def _flash_colour(frame: np.ndarray) -> str | None:
    """The colour of a flash frame (bright saturated whole frame), else None."""
    mean = frame.reshape(-1, 3).astype(np.float64).mean(0)
    if mean.max() < 150:
        return None
    return min(COLOURS, key=lambda c: float(np.abs(mean - np.asarray(COLOURS[c])).sum()))


def _flashes(frames: np.ndarray) -> list[tuple[int, str]]:
    """(first frame, colour) of each run of flash frames."""
    out, prev = [], None
    for i, f in enumerate(frames):
        c = _flash_colour(f)
        if c is not None and c != prev:
            out.append((i, c))
        prev = c
    return out


def _head(frame: np.ndarray) -> np.ndarray | None:
    """Centroid (y, x) of the white head of a moving square, None when there is none."""
    ys, xs = np.nonzero(frame.min(axis=2) > 200)
    return None if len(ys) < 4 else np.array([ys.mean(), xs.mean()])


def _direction(frames: np.ndarray) -> str:
    heads = [(i, h) for i, f in enumerate(frames) if _flash_colour(f) is None and (h := _head(f)) is not None]
    assert len(heads) == 2 and heads[1][0] == heads[0][0] + 1, [i for i, _ in heads]
    dy, dx = heads[1][1] - heads[0][1]
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


# -- rendering ---------------------------------------------------------------------------------------------
def test_render_flash_and_move_frames():
    events = (Event("flash", 3, 2, colour="blue"), Event("move", 8, 2, direction="left", y=20, x=40))
    frames = render_video(events, 12, size=64, rng=np.random.default_rng(1))
    assert frames.shape == (12, 64, 64, 3) and frames.dtype == np.uint8
    assert (frames[3:5] == np.asarray(COLOURS["blue"], np.uint8)).all()
    quiet = [i for i in range(12) if i not in (3, 4, 8, 9)]
    assert frames[quiet].max() <= 110  # the scene is dim: nothing there looks like an event
    assert (frames[quiet] == frames[quiet[0]]).all()  # and static
    assert _direction(frames) == "left"
    # one frame alone shows the direction: the trail (dimmer) lies behind the head (to its right)
    row = frames[8, 24].max(axis=1).astype(int)
    head_x = int(np.nonzero(row > 200)[0].mean())
    assert row[head_x + 8] < 200 and row[head_x + 8] > row[0] + 20


@pytest.mark.parametrize("kind", KINDS)
def test_scenarios_fit_and_answer(kind):
    rng = np.random.default_rng(7)
    for _ in range(30):
        sc = make_scenario(kind, 16, rng)
        task, question, options, ans = sc.questions[0]
        assert task == kind and options == OPTIONS[kind] and all(w in SYNTHETIC_WORDS for w in question.split())
        spans = sorted((e.start, e.start + e.length) for e in sc.events)
        assert spans[0][0] >= 0 and spans[-1][1] <= 16
        assert all(b[0] - a[1] >= 3 for a, b in zip(spans, spans[1:]))  # min_gap free frames between events
        flashes = [e for e in sc.events if e.kind == "flash"]
        if kind == "count":
            assert options[ans] == str(len(flashes))
        elif kind in ("colour", "order"):
            assert options[ans] == flashes[0].colour
            assert len(flashes) == (1 if kind == "colour" else 2)
        else:
            assert options[ans] == next(e.direction for e in sc.events if e.kind == "move")


# -- files and answers -------------------------------------------------------------------------------------
def test_long_videos_decode_and_answers_match_pixels(data):
    items = read_mcq(data.long)
    assert len(items) == SMALL["num_long"] and {it.task_type for it in items} == set(KINDS)
    for it in items:
        info = probe_video(it.video)
        assert info.codec == "h264" and (info.width, info.height) == (64, 64)
        frames = read_video(it.video, fps=8).frames
        assert frames.shape[0] == SMALL["long_frames"]
        flashes = _flashes(frames)
        answer = it.answer
        if it.task_type == "colour":
            assert [c for _, c in flashes] == [answer]
        elif it.task_type == "order":
            assert len(flashes) == 2 and flashes[0][1] == answer
        elif it.task_type == "count":
            assert len(flashes) == int(answer)
        else:
            assert _direction(frames) == answer
        # held-out long videos: one-frame flashes (briefer than the sparse stride of 4)
        for start, _ in flashes:
            assert start + 1 == len(frames) or _flash_colour(frames[start + 1]) is None
        assert it.duration == SMALL["long_frames"] / 8 and it.duration_class == "long"


def test_train_pairs_parse_and_answers_match_pixels(data):
    pairs = read_pairs_jsonl(data.train)
    recs = [json.loads(line) for line in Path(data.train).read_text().splitlines()]
    assert len(pairs) == len(recs) >= SMALL["num_train"]
    assert len({p.video for p in pairs}) == SMALL["num_train"]
    for p, r in zip(pairs, recs):
        frames = read_video(p.video, fps=8).frames
        assert frames.shape[0] == SMALL["short_frames"]
        if r["task_type"] == "colour":
            assert [c for _, c in _flashes(frames)] == [p.answer]
        elif r["task_type"] == "motion":
            assert _direction(frames) == p.answer
        assert all(w in SYNTHETIC_WORDS for w in (p.prompt + " " + p.answer).split())
    short = read_mcq(data.val_short)
    assert len(short) == SMALL["num_val_short"] and all(it.duration_class == "short" for it in short)


def test_generation_is_cached_and_keyed_by_parameters(data, tmp_path):
    again = generate_lvc_synthetic(data.root.parent, **SMALL)
    assert again.root == data.root and again.info == data.info
    other = generate_lvc_synthetic(data.root.parent, **{**SMALL, "num_long": 4, "seed": 3})
    assert other.root != data.root and len(read_mcq(other.long)) == 4
    with pytest.raises(TypeError, match="unknown generator parameter"):
        generate_lvc_synthetic(tmp_path, frames=3)


# -- the data module: dense vs sparse sampling -------------------------------------------------------------
def test_datamodule_dense_and_sparse_batches(data):
    dense = SyntheticVideoDataModule(cache_dir=str(data.root.parent), generator=SMALL, fps=8, batch_size=2)
    dense.prepare_data()
    assert [s.name for s in dense.eval_sets()] == ["long", "short"]
    long_loader, short_loader = dense.val_dataloader()
    batch = next(iter(long_loader))
    assert batch["frames"].shape == (2, 32, 3, 64, 64) and batch["frames_mask"].all()
    assert batch["task_type"] == ["colour", "motion"] and len(batch["options"][0]) == 4
    assert next(iter(short_loader))["frames"].shape[1] == 16
    train = next(iter(dense.train_dataloader()))
    assert set(train) >= {"frames", "frames_mask", "prompt", "answer"} and train["frames"].shape[1] == 16

    sparse = SyntheticVideoDataModule(cache_dir=str(data.root.parent), generator=SMALL, fps=2, batch_size=2)
    b = next(iter(sparse.val_dataloader()[0]))
    assert b["frames"].shape[1] == 8
    assert b["frame_indices"][0].tolist() == [4 * i + 2 for i in range(8)]  # the centre of each group of 4

    # the same files through the generic MCQ module
    generic = VideoMCQDataModule(annotations={"long": str(data.long)}, fps=8, image_size=64, batch_size=4)
    assert next(iter(generic.val_dataloader()))["frames"].shape == (4, 32, 3, 64, 64)


def test_datamodule_rejects_bad_options(tmp_path):
    with pytest.raises(TypeError, match="unknown generator parameter"):
        SyntheticVideoDataModule(cache_dir=str(tmp_path), generator={"bogus": 1})
    with pytest.raises(ValueError, match="eval_sets"):
        SyntheticVideoDataModule(cache_dir=str(tmp_path), eval_sets=["medium"])


# -- the base model: trained whole, cached, prompts as LVCAlign builds them ---------------------------------
def test_base_vlm_trained_whole_cached_and_prompts_match_lvcalign(data, tmp_path):
    import torch

    from spikelight.models.vlm import build_tiny_vlm, load_vlm
    from spikelight.tasks.lvc_align import LVCAlign
    from spikelight.tasks.vlm_pretrain import PROMPT_WORDS, ensure_base_vlm, pair_inputs

    opts = dict(steps=2, batch_size=2, words=SYNTHETIC_WORDS, patch_size=16, log=None)
    folder = ensure_base_vlm(tmp_path / "base", data.train, **opts)
    vlm = load_vlm(folder)
    assert vlm.tokens_per_frame == 4
    ref = load_vlm(build_tiny_vlm("internvl", tmp_path / "ref", words=[*SYNTHETIC_WORDS, *PROMPT_WORDS],
                                  patch_size=16))
    before, after = dict(ref.named_parameters()), dict(vlm.named_parameters())
    for part in (vlm.vision_tower, vlm.alignment_layer, vlm.language_model):  # every part trained
        ids = {id(q) for q in part.parameters()}
        names = [n for n, q in after.items() if id(q) in ids]
        assert names and any(not torch.equal(before[n], after[n]) for n in names)
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert ensure_base_vlm(tmp_path / "base", data.train, **opts) == folder
    assert weights.stat().st_mtime_ns == stamp  # same settings: reused
    assert "<unk>" not in vlm.tokenizer.convert_ids_to_tokens(pair_inputs(vlm, 2, "what colour flashed ?", "red")[0])

    task = LVCAlign(vlm=str(folder), compress=False)
    batch = {"frames_mask": torch.ones(2, 16, dtype=torch.bool), "prompt": ["what colour flashed ?",
             "which way did the object move ?"], "answer": ["red", "left"]}
    got = task.training_inputs(batch)
    for i in range(2):
        ids, labels = pair_inputs(vlm, 16, batch["prompt"][i], batch["answer"][i])
        n = int(got["attention_mask"][i].sum())
        assert got["input_ids"][i, :n].tolist() == ids and got["labels"][i, :n].tolist() == labels
