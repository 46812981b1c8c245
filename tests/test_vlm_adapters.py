"""VLM adapters (spikelight.models.vlm) on tiny random InternVL / LLaVA-OneVision models saved as local HF
folders: the adapter's forward is the vanilla transformers forward (no compression and w = 1), the
placeholder layout is the processor's, compression feeds the LLM ceil(M/w) pseudo-frames, "align" mode
trains the projector only, and the loaders refuse what they cannot load with a message naming the folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spikelight.hf import load_hf_processor
from spikelight.models.lvc import QueryAttentionCompression
from spikelight.models.vlm import (
    InternVLAdapter,
    LlavaOnevisionAdapter,
    adapter_for,
    build_tiny_vlm,
    load_vlm,
)

pytestmark = pytest.mark.usefixtures("one_thread")

KINDS = ["internvl", "llava_onevision"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_vlms")
    return {k: build_tiny_vlm(k, root / k, words=["cube", "sphere"], seed=0) for k in KINDS}


@pytest.fixture(scope="module")
def vlms(folders):
    return {k: load_vlm(folders[k]) for k in KINDS}


def vanilla_logits(vlm, input_ids, attention_mask, frames):
    """The model's own forward on [B, M, 3, H, W] frames, as its processor lays them out."""
    with torch.no_grad():
        if vlm.kind == "internvl":
            return vlm.model(
                input_ids=input_ids, attention_mask=attention_mask, pixel_values=frames.flatten(0, 1)
            ).logits
        return vlm.model(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values_videos=frames
        ).logits


def prompts(vlm, frames_per_video, questions):
    texts = [f"{q} {vlm.visual_prompt(n)} answer :" for q, n in zip(questions, frames_per_video)]
    enc = vlm.tokenizer(texts, return_tensors="pt", padding=True)
    qs = vlm.tokenizer(questions, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask, qs.input_ids, qs.attention_mask


def test_folder_is_complete_and_loads_with_transformers(folders, vlms):
    from transformers import InternVLForConditionalGeneration, LlavaOnevisionForConditionalGeneration

    for kind, cls in zip(KINDS, (InternVLForConditionalGeneration, LlavaOnevisionForConditionalGeneration)):
        names = {p.name for p in folders[kind].iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= names
        model = cls.from_pretrained(folders[kind], local_files_only=True)
        ref = dict(vlms[kind].model.state_dict())
        assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
        vlm = vlms[kind]
        assert vlm.tokens_per_frame == 16 and vlm.hidden_size == 64
        tok = vlm.tokenizer
        assert tok.convert_ids_to_tokens([vlm.image_token_id]) == [
            "<IMG_CONTEXT>" if kind == "internvl" else "<video>"
        ]
        assert tok("cube sphere").input_ids == tok.convert_tokens_to_ids(["cube", "sphere"])
    assert isinstance(vlms["internvl"], InternVLAdapter) and isinstance(
        vlms["llava_onevision"], LlavaOnevisionAdapter
    )


@pytest.mark.parametrize("kind", KINDS)
def test_processor_layout_and_vanilla_forward_equal_the_adapter(kind, folders, vlms):
    """The folder's own processor expands a video; the adapter counts the same placeholders and its
    forward (no compression, and w = 1) gives exactly the vanilla logits."""
    vlm = vlms[kind]
    proc = load_hf_processor(folders[kind])
    video = np.random.default_rng(0).integers(0, 255, (3, 48, 80, 3), dtype=np.uint8)
    enc = proc(
        text=["what colour <video> ?"],
        videos=[video],
        return_tensors="pt",
        videos_kwargs={"do_sample_frames": False},
    )
    assert int((enc.input_ids == vlm.image_token_id).sum()) == vlm.num_placeholders(3)
    frames = (enc.pixel_values if kind == "internvl" else enc.pixel_values_videos).reshape(1, 3, 3, 64, 64)
    ref = vanilla_logits(vlm, enc.input_ids, enc.attention_mask, frames)
    q_ids = vlm.tokenizer(["what colour"], return_tensors="pt").input_ids
    with torch.no_grad():
        plain = vlm(enc.input_ids, enc.attention_mask, pixel_values=frames).logits
        w1 = vlm(
            enc.input_ids,
            enc.attention_mask,
            pixel_values=frames,
            compression=QueryAttentionCompression(window=1),
            question_ids=q_ids,
        ).logits
    assert torch.equal(plain, ref) and torch.equal(w1, ref)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_of_two_videos_w1_and_cached_features_equal_vanilla(kind, vlms):
    vlm = vlms[kind]
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(2, 4, 3, 64, 64, generator=g)
    ids, mask, q_ids, q_mask = prompts(vlm, [4, 4], ["what colour is the cube", "how many"])
    ref = vanilla_logits(vlm, ids, mask, frames)
    with torch.no_grad():
        feats = vlm.vision_features(frames.flatten(0, 1)).view(
            2, 4, *vlm.vision_features(frames[0, :1]).shape[1:]
        )
        out = vlm(
            ids,
            mask,
            pixel_values=frames,
            compression=QueryAttentionCompression(window=1),
            question_ids=q_ids,
            question_mask=q_mask,
        ).logits
        cached = vlm(ids, mask, features=feats).logits
    assert torch.equal(out, ref) and torch.equal(cached, ref)


@pytest.mark.parametrize("kind", KINDS)
def test_videos_of_different_lengths_in_one_batch(kind, vlms):
    """A 4-frame and a 2-frame video (padded to 4 with garbage) in one batch give each video's own logits."""
    vlm = vlms[kind]
    g = torch.Generator().manual_seed(2)
    long, short = torch.randn(1, 4, 3, 64, 64, generator=g), torch.randn(1, 2, 3, 64, 64, generator=g)
    frames = torch.cat([long, torch.cat([short, torch.full((1, 2, 3, 64, 64), 1e4)], dim=1)])
    frame_mask = torch.tensor([[True] * 4, [True, True, False, False]])
    ids, mask, _, _ = prompts(vlm, [4, 2], ["what", "which"])
    with torch.no_grad():
        out = vlm(ids, mask, pixel_values=frames, frame_mask=frame_mask).logits
    for row, video in ((0, long), (1, short)):
        n = int(mask[row].sum())  # right padding: the valid positions come first
        ref = vanilla_logits(vlm, ids[row : row + 1, :n], mask[row : row + 1, :n], video)
        torch.testing.assert_close(out[row : row + 1, :n], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_compression_feeds_ceil_m_over_w_pseudo_frames(kind, vlms):
    """M = 5 identical frames, w = 5 -> one pseudo-frame = that frame (the softmax weights sum to one):
    the logits of the vanilla single-frame forward. A prompt with M frames' placeholders is refused."""
    vlm = vlms[kind]
    g = torch.Generator().manual_seed(3)
    one = torch.randn(1, 1, 3, 64, 64, generator=g)
    ids1, mask1, q_ids, q_mask = prompts(vlm, [1], ["what colour is the sphere"])
    ref = vanilla_logits(vlm, ids1, mask1, one)
    lvc = QueryAttentionCompression(window=5)
    with torch.no_grad():
        out = vlm(
            ids1,
            mask1,
            pixel_values=one.expand(1, 5, 3, 64, 64),
            compression=lvc,
            question_ids=q_ids,
            question_mask=q_mask,
        ).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    ids5, mask5, _, _ = prompts(vlm, [5], ["what colour is the sphere"])
    with pytest.raises(
        ValueError, match=r"row 0 of input_ids has \d+ visual placeholder tokens.*1 \(pseudo-\)frames"
    ):
        vlm(ids5, mask5, pixel_values=one.expand(1, 5, 3, 64, 64), compression=lvc, question_ids=q_ids)
    with pytest.raises(ValueError, match="needs the question"):
        vlm(ids1, mask1, pixel_values=one.expand(1, 5, 3, 64, 64), compression=lvc)
    with pytest.raises(ValueError, match="exactly one of pixel_values"):
        vlm(ids1, mask1)


@pytest.mark.parametrize("kind", KINDS)
def test_align_mode_trains_only_the_alignment_layer(kind, folders):
    vlm = load_vlm(folders[kind]).set_trainable("align")
    proj = {n for n, _ in vlm.alignment_layer.named_parameters()}
    trainable = [n for n, p in vlm.named_parameters() if p.requires_grad]
    assert len(trainable) == len(proj) and all(".multi_modal_projector." in n for n in trainable)
    assert vlm.trainable_parameters() == sum(p.numel() for p in vlm.alignment_layer.parameters())
    vlm.train()
    assert vlm.alignment_layer.training and not vlm.vision_tower.training and not vlm.model.lm_head.training
    before = {k: v.clone() for k, v in vlm.state_dict().items()}
    g = torch.Generator().manual_seed(4)
    frames = torch.randn(2, 4, 3, 64, 64, generator=g)
    ids, mask, q_ids, q_mask = prompts(vlm, [2, 2], ["what colour", "how many times"])
    labels = ids.masked_fill(mask == 0, -100).masked_fill(ids == vlm.image_token_id, -100)
    opt = torch.optim.AdamW([p for p in vlm.parameters() if p.requires_grad], lr=1e-2)
    out = vlm(
        ids,
        mask,
        pixel_values=frames,
        labels=labels,
        compression=QueryAttentionCompression(window=2),
        question_ids=q_ids,
        question_mask=q_mask,
    )
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(
        p.grad is None
        for n, p in vlm.named_parameters()
        if n not in {f"model.model.multi_modal_projector.{x}" for x in proj}
    )
    opt.step()
    after = vlm.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".multi_modal_projector." in k for k in changed)
    assert all(torch.equal(before[k], after[k]) for k in before if ".multi_modal_projector." not in k)
    assert {k.rsplit("multi_modal_projector.", 1)[1] for k in changed} == proj  # every projector tensor moved
    assert vlm.set_trainable("all").trainable_parameters() == sum(p.numel() for p in vlm.parameters())
    with pytest.raises(ValueError, match="'align', 'all' or 'none'"):
        vlm.set_trainable("projector")


def test_adapter_for_a_built_model_and_loader_errors(tmp_path, vlms):
    wrapped = adapter_for(vlms["internvl"].model, tokenizer=vlms["internvl"].tokenizer)
    assert isinstance(wrapped, InternVLAdapter) and wrapped.num_placeholders(3) == 48
    assert vlms["llava_onevision"].num_placeholders(3) == 49  # + the video's newline token
    with pytest.raises(FileNotFoundError, match="is not a local Hugging Face model folder"):
        load_vlm(tmp_path / "absent")

    def folder(name, config):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        return tmp_path / name

    phi = folder("phi", {"model_type": "phi3_v", "architectures": ["Phi3VForCausalLM"]})
    with pytest.raises(ValueError, match=r"phi.*remote code.*trust_remote_code: true"):
        load_vlm(phi)
    with pytest.raises(
        FileNotFoundError, match="no auto_map.AutoModelForCausalLM.*lacks Phi-3.5-Vision's remote code"
    ):
        load_vlm(phi, trust_remote_code=True)
    auto = {
        "AutoConfig": "configuration_phi3_v.Phi3VConfig",
        "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
    }
    phi2 = folder("phi2", {"model_type": "phi3_v", "auto_map": auto})
    (phi2 / "configuration_phi3_v.py").write_text("")
    with pytest.raises(
        FileNotFoundError, match=r"phi2: the folder lacks the remote code modeling_phi3_v\.py"
    ):
        load_vlm(phi2, trust_remote_code=True)
    phi3 = folder(
        "phi3", {"model_type": "phi3_v", "auto_map": {"AutoModelForCausalLM": "org/repo--modeling_phi3_v.X"}}
    )
    with pytest.raises(FileNotFoundError, match="points to code in another repository"):
        load_vlm(phi3, trust_remote_code=True)
    chat = folder("chat", {"model_type": "internvl_chat"})
    with pytest.raises(ValueError, match=r"'internvl_chat' has no VLM adapter \(the original remote-code"):
        load_vlm(chat)
    with pytest.raises(ValueError, match="unknown tiny VLM kind"):
        build_tiny_vlm("phi3_v", tmp_path / "x")


def test_gradient_checkpointing_recomputes_the_llm_and_gives_the_same_projector_gradient(folders):
    grads, calls = [], []
    for checkpointing in (False, True):
        vlm = load_vlm(folders["internvl"]).set_trainable("align")
        if checkpointing:
            vlm.enable_gradient_checkpointing()
        vlm.train()
        assert vlm.language_model.training == checkpointing and not vlm.vision_tower.training
        n: list[int] = []
        vlm.language_model.layers[0].mlp.register_forward_pre_hook(lambda *_, n=n: n.append(1))
        g = torch.Generator().manual_seed(5)
        frames = torch.randn(1, 4, 3, 64, 64, generator=g)
        ids, mask, q_ids, _ = prompts(vlm, [2], ["what colour is the cube"])
        loss = vlm(
            ids,
            mask,
            pixel_values=frames,
            labels=ids.masked_fill(ids == vlm.image_token_id, -100),
            compression=QueryAttentionCompression(window=2),
            question_ids=q_ids,
        ).loss
        loss.backward()
        grads.append([p.grad.clone() for p in vlm.alignment_layer.parameters()])
        calls.append(len(n))
    assert calls == [1, 2]  # the first decoder layer ran again in backward
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
