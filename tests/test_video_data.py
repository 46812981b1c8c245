"""Video data for LVC: PyAV decoding / sampling / seeking on real clips and written files, manifests (pairs,
MLVU, Video-MME + subtitles), missing / bad videos, frame transforms, the feature cache."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from spikelight.datamodules import DataError, VideoMCQDataModule, VideoTextDataModule  # noqa: E402
from spikelight.datamodules.video import (  # noqa: E402
    FrameTransform,
    MCQItem,
    VideoDataset,
    VideoError,
    VideoSampling,
    VisionFeatureCache,
    available_encoders,
    decode_frames,
    frame_times,
    parse_srt,
    probe_video,
    read_mcq,
    read_mlvu,
    read_video,
    read_videomme,
    subtitles_in_range,
    uniform_indices,
    write_video,
)
from spikelight.datamodules.video.pairs import VideoTextItem, write_jsonl  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# name: (codec, width, height, fps, frames, has audio) as in ../shared/data/SOURCES.md section 3
REAL_CLIPS = {
    "mmaction2/demo.mp4": ("h264", 340, 256, 28, 280, False),
    "mmaction2/test.avi": ("mpeg4", 320, 240, 25, 164, True),
    "mmaction2/part_0.mp4": ("h264", 340, 256, 30, 32, False),
    "gradio/video_sample.webm": ("vp9", 480, 270, 30, 150, True),
    "gradio/video_sample.mp4": ("h264", 480, 270, 30, 150, True),
}


def full_decode(path) -> tuple[np.ndarray, np.ndarray]:
    """Every frame by a plain sequential PyAV decode (decoder output order) and the sorted frame times."""
    with av.open(str(path)) as c:
        frames, times = [], []
        for f in c.decode(c.streams.video[0]):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(float(f.time))
    return np.stack(frames), np.sort(np.array(times))


def pattern(n: int, h: int = 32, w: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth moving gradients (compress well) with a per-frame brightness code."""
    y, x = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        r = (x * 4 + i * 7) % 256
        g = (y * 6 + seed * 40) % 256
        b = np.full_like(x, (i * 23) % 256)
        out.append(np.stack([r, g, b], -1))
    return np.stack(out).astype(np.uint8)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """A 30 s, 10 fps clip with a keyframe every 10 frames (seekable)."""
    return write_video(tmp_path_factory.mktemp("v") / "long.mp4", pattern(300), 10, gop_size=10)


# -- decoding ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(REAL_CLIPS))
def test_real_clips_probe_and_decode(shared_data, name):
    path = shared_data / "videos" / name
    codec, w, h, fps, n, audio = REAL_CLIPS[name]
    info = probe_video(path)
    assert (info.codec, info.width, info.height, round(info.fps), info.has_audio) == (codec, w, h, fps, audio)
    assert frame_times(path).size == n  # exact count, also for WebM whose header has none
    clip = read_video(path, num_frames=8)
    assert clip.frames.shape == (8, h, w, 3) and clip.frames.dtype == np.uint8
    assert clip.to_tensor().shape == (8, 3, h, w) and 0.0 <= float(clip.to_tensor().min()) <= 1.0


@pytest.mark.parametrize("name", ["mmaction2/demo.mp4", "mmaction2/test.avi", "mmaction2/part_0.mp4",
                                  "gradio/video_sample.webm"])
def test_uniform_sampling_matches_full_decode(shared_data, name):
    path = shared_data / "videos" / name
    ref, ref_t = full_decode(path)
    n = ref.shape[0]
    clip = read_video(path, num_frames=12)
    expected = [int(np.floor((i + 0.5) * n / 12)) for i in range(12)]  # segment centres, by hand
    assert clip.indices.tolist() == expected
    for frame, k in zip(clip.frames, clip.indices):
        np.testing.assert_array_equal(frame, ref[k])
    np.testing.assert_allclose(clip.timestamps, ref_t[expected], atol=1e-9)


@pytest.mark.parametrize("name", ["mmaction2/demo.mp4", "gradio/video_sample.webm", "mmaction2/test.avi"])
def test_seek_path_equals_sequential_path_real(shared_data, name):
    path = shared_data / "videos" / name
    idx = [3, 40, 41, 97, 120, 149]
    stats = {"sequential": {}, "seek": {}, "auto": {}}
    a, b, c = (decode_frames(path, idx, strategy=s, stats=stats[s]) for s in ("sequential", "seek", "auto"))
    assert a.indices.tolist() == b.indices.tolist() == c.indices.tolist() == idx
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.frames, c.frames)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert stats["seek"]["seeks"] == 5
    # few keyframes: forced seeks decode more than going on; auto never does
    assert stats["auto"]["decoded"] <= stats["sequential"]["decoded"] <= stats["seek"]["decoded"]


def test_seeking_decodes_only_what_is_needed(long_clip):
    ref, _ = full_decode(long_clip)
    idx = [5, 120, 121, 250, 299]
    stats_seq, stats_seek, stats_auto = {}, {}, {}
    seq = decode_frames(long_clip, idx, strategy="sequential", stats=stats_seq)
    seek = decode_frames(long_clip, idx, strategy="seek", stats=stats_seek)
    auto = decode_frames(long_clip, idx, strategy="auto", stats=stats_auto)
    for clip in (seq, seek, auto):
        assert clip.indices.tolist() == idx
        for frame, k in zip(clip.frames, idx):
            np.testing.assert_array_equal(frame, ref[k])
    assert stats_seq["seeks"] == 0 and stats_seq["decoded"] >= 299
    # keyframes every 10 frames: each seek decodes at most 10 frames (+ the reorder look-ahead)
    assert stats_seek["seeks"] >= 3 and stats_seek["decoded"] < 80
    assert stats_auto["seeks"] == 3 and stats_auto["decoded"] < 80  # 5 from the start; 120, 250, 299 seek
    # sequential stops after the last needed frame: a frame early in the video costs a few frames
    early = {}
    decode_frames(long_clip, [0, 3], strategy="auto", stats=early)
    assert early["decoded"] <= 10


def test_fps_sampling(long_clip):
    clip = read_video(long_clip, fps=2.0)  # 30 s at 10 fps: centres of 0.5 s intervals
    assert clip.indices.tolist() == [int(np.floor((k + 0.5) * 5)) for k in range(60)]
    np.testing.assert_allclose(clip.timestamps, (np.floor((np.arange(60) + 0.5) * 5)) / 10, atol=1e-9)
    capped = read_video(long_clip, fps=2.0, max_frames=6)
    assert capped.indices.tolist() == [int(np.floor((k + 0.5) * 50)) for k in range(6)]
    assert read_video(long_clip, fps=2.0, size=(16, 24)).frames.shape == (60, 16, 24, 3)


def test_uniform_indices_by_hand():
    assert uniform_indices(10, 4).tolist() == [1, 3, 6, 8]
    assert uniform_indices(3, 5).tolist() == [0, 1, 2]  # unique: every frame once
    assert uniform_indices(3, 5, unique=False).tolist() == [0, 0, 1, 2, 2]


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_write_video_round_trip(tmp_path, suffix):
    frames = pattern(12)
    path = write_video(tmp_path / f"a{suffix}", frames, 6)
    info = probe_video(path)
    assert (info.width, info.height, info.fps, info.num_frames) == (48, 32, 6.0, 12)
    assert info.codec == ("h264" if suffix == ".mp4" and "libx264" in available_encoders() else "mpeg4")
    back = read_video(path).frames
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 4.0  # lossy, but close
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 31, 48, 3), np.uint8), 6)


# -- bad files ----------------------------------------------------------------------------------------------
def test_truncated_and_unreadable_videos_name_the_file(tmp_path, long_clip):
    data = long_clip.read_bytes()
    cut = tmp_path / "cut_index_at_end.mp4"  # the mp4 index (moov) is at the end: cutting loses it
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="cut_index_at_end.mp4: cannot open"):
        read_video(cut, num_frames=4)
    fast = write_video(tmp_path / "fast.mp4", pattern(100), 10, gop_size=10, faststart=True)
    raw = fast.read_bytes()
    cut2 = tmp_path / "cut_data.mp4"  # index first: the file opens, the frames stop early
    cut2.write_bytes(raw[: len(raw) * 2 // 5])
    assert probe_video(cut2).num_frames == 100  # the header still says 100
    with pytest.raises(VideoError, match=r"cut_data.mp4: truncated video: the header says 100 frames"):
        read_video(cut2, num_frames=8)
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    with pytest.raises(VideoError, match="junk.mp4: cannot open"):
        probe_video(junk)
    assert isinstance(VideoError("a", "b"), ValueError)
    with pytest.raises(FileNotFoundError, match="absent.mp4"):
        probe_video(tmp_path / "absent.mp4")


def test_bad_video_error_or_skip_and_count(tmp_path):
    good = write_video(tmp_path / "good.mp4", pattern(8), 4)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(good.read_bytes()[:300])
    items = [VideoTextItem(str(bad), "p0", "a0"), VideoTextItem(str(good), "p1", "a1")]
    ds = VideoDataset(items, sampling=VideoSampling(num_frames=4))
    with pytest.raises(VideoError, match="bad.mp4"):
        ds[0]
    ds = VideoDataset(items, sampling=VideoSampling(num_frames=4), on_bad_video="skip")
    with pytest.warns(UserWarning, match="bad.mp4"):
        s = ds[0]
    assert s["video"] == str(good) and s["prompt"] == "p1" and s["skipped"] == [str(bad)]
    assert ds.bad_videos == [str(bad)]


def test_missing_videos_reported_before_training(tmp_path):
    write_video(tmp_path / "v0.mp4", pattern(8), 4)
    recs = [{"video": "v0.mp4", "prompt": "p", "answer": "a"}] + \
        [{"video": f"gone_{i}.mp4", "prompt": "p", "answer": "a"} for i in range(7)]
    manifest = write_jsonl(tmp_path / "train.jsonl", recs)
    dm = VideoTextDataModule(train_manifest=str(manifest), num_frames=4, batch_size=2)
    with pytest.raises(DataError) as e:
        dm.setup("fit")
    msg = str(e.value)
    assert msg.startswith(f"{manifest}: 7 of 8 entries name a missing video")
    assert all(str(tmp_path / f"gone_{i}.mp4") in msg for i in range(5)) and "gone_5" not in msg
    dm = VideoTextDataModule(train_manifest=str(manifest), num_frames=4, batch_size=2, on_missing_video="skip")
    with pytest.warns(UserWarning, match="7 of 8 entries"):
        dm.setup("fit")
    assert len(dm.train_set) == 1


# -- manifests ------------------------------------------------------------------------------------------------
def test_jsonl_pairs_datamodule_pads_and_masks(tmp_path):
    (tmp_path / "clips").mkdir()
    write_video(tmp_path / "clips/a.mp4", pattern(10), 5)
    write_video(tmp_path / "clips/b.mp4", pattern(3, seed=1), 5)  # shorter than num_frames: 3 frames
    manifest = write_jsonl(tmp_path / "pairs.jsonl", [
        {"video": "clips/a.mp4", "prompt": "what moves?", "answer": "red"},
        {"video": "clips/b.mp4", "question": "which colour?", "answer": "blue", "extra": 1},
    ])
    dm = VideoTextDataModule(train_manifest=str(manifest), val_manifest=str(manifest), num_frames=6,
                             image_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), batch_size=2)
    batch = next(iter(dm.val_dataloader()))
    assert batch["frames"].shape == (2, 6, 3, 16, 16) and batch["frames"].dtype == torch.float32
    assert batch["frames_mask"].tolist() == [[True] * 6, [True] * 3 + [False] * 3]
    assert batch["frames"][1, 3:].abs().sum() == 0  # padding is zeros
    assert batch["prompt"] == ["what moves?", "which colour?"] and batch["answer"] == ["red", "blue"]
    assert batch["video"] == [str(tmp_path / "clips/a.mp4"), str(tmp_path / "clips/b.mp4")]
    np.testing.assert_allclose(batch["timestamps"][0].numpy(), uniform_indices(10, 6) / 5, atol=1e-6)
    assert batch["frame_indices"][1].tolist() == [0, 1, 2, -1, -1, -1]
    assert batch["skipped"] == []
    assert [s.name for s in dm.eval_sets()] == ["val"]


def _mlvu_expected(folder: Path) -> tuple[int, int, int]:
    """(MCQ records usable, MCQ records whose answer is not a candidate, open-ended), read independently."""
    ok = bad = open_ended = 0
    for f in sorted(folder.glob("*.json")):
        for r in json.loads(f.read_text()):
            if "candidates" not in r:
                open_ended += 1
            elif r["answer"] in r["candidates"]:
                ok += 1
            else:
                bad += 1
    return ok, bad, open_ended


def test_mlvu_annotations_parse(shared_data, tmp_path):
    folder = shared_data / "video_qa" / "mlvu"
    ok, bad, open_ended = _mlvu_expected(folder)
    assert (ok, bad, open_ended) == (2173, 2, 418)  # SOURCES.md: 539+355+352+206+259+200+264 MCQ, 2 bad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items = read_mlvu(folder, video_root=tmp_path)
    assert len(items) == ok
    per_type = {}
    for it in items:
        per_type[it.task_type] = per_type.get(it.task_type, 0) + 1
    assert per_type == {"plotQA": 539, "findNeedle": 353, "ego": 352, "count": 206, "order": 259,
                        "anomaly_reco": 200, "topic_reasoning": 264}
    first = json.loads((folder / "2_needle.json").read_text())[0]
    it = next(i for i in items if i.qid == "2_needle:0")
    assert it.options[it.answer_index] == first["answer"] and list(it.options) == first["candidates"]
    assert it.duration == pytest.approx(first["duration"])
    assert it.video == str(tmp_path / "2_needle" / first["video"])
    with pytest.raises(DataError, match=r"2_needle.json: record \d+ \(needle_4.mp4\): answer"):
        read_mlvu(folder / "2_needle.json", on_bad_record="error")
    assert read_mcq(folder / "4_count.json").__len__() == 206  # format detected from the keys


def test_videomme_records_and_subtitles(tmp_path):
    videos, subs = tmp_path / "videos", tmp_path / "subtitle"
    write_video(videos / "fFjv93ACGo8.mp4", pattern(40), 4)  # 10 s
    subs.mkdir()
    (subs / "fFjv93ACGo8.srt").write_text(
        "\ufeff1\r\n00:00:00,500 --> 00:00:02,000\r\n<i>Hello</i> there\r\n\r\n"
        "2\n00:00:03,000 --> 00:00:04,500\nsecond line\n\n"
        "3\n00:00:20,000 --> 00:00:25,000\nafter the video range\n", encoding="utf-8")
    recs = [
        {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
         "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-1",
         "task_type": "Counting Problem", "question": "How many?", "options": ["A. 1.", "B. 2.", "C. 3.", "D. 4."],
         "answer": "C"},
        {"video_id": "002", "duration": "long", "domain": "Sports", "sub_category": "Football",
         "videoID": "absentVideo", "question_id": "002-1", "task_type": "Action Reasoning", "question": "Why?",
         "options": ["A. x", "B. y", "C. z", "D. w"], "answer": "A"},
        {"video_id": "003", "duration": "short", "videoID": "fFjv93ACGo8", "question_id": "003-1",
         "task_type": "OCR", "question": "Bad letter", "options": ["A. x", "B. y"], "answer": "E"},
    ]
    ann = tmp_path / "videomme.json"
    ann.write_text(json.dumps(recs))
    with pytest.warns(UserWarning, match="skipped 1 bad records"):
        items = read_videomme(ann, video_root=videos, subtitles_dir=subs)
    assert [(i.qid, i.answer_index, i.duration_class, i.task_type) for i in items] == [
        ("001-1", 2, "short", "Counting Problem"), ("002-1", 0, "long", "Action Reasoning")]
    assert items[0].options == ("1.", "2.", "3.", "4.") and items[0].answer == "3."
    assert items[0].video == str(videos / "fFjv93ACGo8.mp4") and items[0].subtitles == str(subs / "fFjv93ACGo8.srt")
    assert items[1].subtitles is None
    dm = VideoMCQDataModule(annotations={"videomme": str(ann)}, video_root=str(videos), subtitles_dir=str(subs),
                            subtitles=True, num_frames=4, image_size=16, batch_size=2, on_missing_video="skip")
    with pytest.warns(UserWarning):
        batch = next(iter(dm.val_dataloader()))
    assert batch["answer_index"].tolist() == [2] and batch["options"] == [["1.", "2.", "3.", "4."]]
    assert batch["duration_class"] == ["short"] and torch.isnan(batch["duration"]).all()
    assert batch["subtitles"] == ["Hello there\nsecond line"]  # frames at 1.0 ... 8.5 s: cue 3 is outside


def test_srt_parsing_and_range():
    cues = parse_srt("1\n00:00:01.000 --> 00:00:02,5\n{\\an8}<font color=red>a</font>\nb\n2\n"
                     "00:01:00,000 --> 00:01:01,000 X1:0\nc\n")
    assert [(c.start, c.end, c.text) for c in cues] == [(1.0, 2.5, "a b"), (60.0, 61.0, "c")]
    assert subtitles_in_range(cues, 2.0, 59.0) == ["a b"]
    assert subtitles_in_range(cues, 0.0, 100.0, max_lines=1) == ["a b"]
    with pytest.raises(DataError, match="x.srt: line 2"):
        parse_srt("1\n00:00:aa --> 00:00:01,000\nz\n", source="x.srt")


def test_mcq_jsonl_round_trip(tmp_path):
    from spikelight.datamodules.video import write_mcq_jsonl

    items = [MCQItem(video=str(tmp_path / "v.mp4"), question="q?", options=("red", "blue", "green"),
                     answer_index=1, task_type="colour", duration=12.5, qid="s:0")]
    path = write_mcq_jsonl(tmp_path / "set.jsonl", items, relative_to=tmp_path)
    assert json.loads(path.read_text().splitlines()[0])["video"] == "v.mp4"
    back = read_mcq(path)
    assert back == items and back[0].answer == "blue" and back[0].answer_letter == "B"
    with pytest.raises(ValueError, match="answer_index 3"):
        MCQItem(video="v", question="q", options=("a", "b"), answer_index=3)


# -- transforms -----------------------------------------------------------------------------------------
def test_frame_transform_by_hand():
    frames = np.zeros((2, 8, 12, 3), np.uint8)
    frames[0] = (255, 0, 51)
    frames[1, :, :6] = 255  # left half white
    out = FrameTransform((4, 6), mean=(0.5, 0.25, 0.2), std=(0.5, 0.25, 0.1))(frames)
    assert out.shape == (2, 3, 4, 6)
    expected = torch.tensor([(1 - 0.5) / 0.5, (0 - 0.25) / 0.25, (0.2 - 0.2) / 0.1])
    torch.testing.assert_close(out[0], expected.view(3, 1, 1).expand(3, 4, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, 0, :, 0], torch.full((4,), 1.0), atol=1e-5, rtol=0)  # white, far from the edge
    torch.testing.assert_close(out[1, 0, :, 5], torch.full((4,), -1.0), atol=1e-5, rtol=0)  # black


def test_hf_processors_one_tile_per_frame(tmp_path):
    transformers = pytest.importorskip("transformers")
    from spikelight.datamodules.video import IMAGENET_MEAN, IMAGENET_STD, HFFrameProcessor

    frames = np.concatenate([pattern(3, 40, 56)] * 1)
    size = {"height": 32, "width": 32}
    got = transformers.GotOcr2ImageProcessor(size=size, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
                                            crop_to_patches=True)
    got.save_pretrained(tmp_path / "internvl_like")
    proc = HFFrameProcessor(tmp_path / "internvl_like")  # from a local folder, cropping turned off
    out = proc(frames)
    assert out.shape == (3, 3, 32, 32)
    direct = got(images=[torch.from_numpy(f).permute(2, 0, 1) for f in frames], crop_to_patches=False,
                 return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(out, direct)
    fallback = FrameTransform(32, mean=IMAGENET_MEAN, std=IMAGENET_STD)(frames)
    assert (out - fallback).abs().mean() < 0.05  # the torch fallback resizes almost like the processor
    video = HFFrameProcessor(transformers.LlavaOnevisionVideoProcessor(size=size))
    assert video.kind == "video" and video(frames).shape == (3, 3, 32, 32)
    assert proc.fingerprint != video.fingerprint


# -- feature cache ----------------------------------------------------------------------------------------
def test_feature_cache_hit_miss_and_keys(tmp_path):
    video = write_video(tmp_path / "v.mp4", pattern(8), 4)
    cache = VisionFeatureCache(tmp_path / "cache")
    s16, s32 = VideoSampling(num_frames=16), VideoSampling(num_frames=32)
    feats = torch.randn(8, 4, 6).to(torch.bfloat16)
    assert cache.get(video, s16, "tiny@1") is None and cache.misses == 1
    path = cache.put(video, s16, "tiny@1", feats)
    assert path.suffix == ".safetensors" and path.read_bytes()[:8] != b"\x80\x04"  # safetensors, not a pickle
    got = cache.get(video, s16, "tiny@1")
    assert got.dtype == torch.bfloat16 and torch.equal(got, feats) and cache.hits == 1
    assert cache.get(video, VideoSampling(num_frames=16, strategy="seek"), "tiny@1") is not None  # same frames
    assert cache.get(video, s32, "tiny@1") is None  # other sampling
    assert cache.get(video, s16, "tiny@2") is None  # other model
    st = os.stat(video)
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed
    assert cache.get(video, s16, "tiny@1") is None
    cache.put(video, s16, "tiny@1", feats)
    cache.path(video, s16, "tiny@1").write_bytes(b"garbage")  # a damaged entry is a miss, then gone
    assert cache.get(video, s16, "tiny@1") is None and not cache.path(video, s16, "tiny@1").exists()
    assert (video, s16, "tiny@1") not in cache
