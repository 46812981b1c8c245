"""LVCAlign (spikelight.tasks.lvc_align) on a tiny random InternVL saved as a local HF folder: only the
alignment layer trains (everything else bit-identical after a step), the loss is the CE over the answer
tokens only, option-likelihood scores equal a direct computation, letter parsing and per-type / duration
accuracy, predictions JSONL round-trip, checkpoints hold the projector only and resume to the same loss,
the feature cache skips the vision tower, and the real-model configs print and start on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from spikelight.models.vlm import build_tiny_vlm
from spikelight.tasks.lvc_align import LVCAlign, accuracy_summary, parse_letter

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
WORDS = ["cube", "sphere", "slow", "fast"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_vlm("internvl", tmp_path_factory.mktemp("vlm") / "tiny-internvl", words=WORDS, seed=0)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Four short mp4 clips (different lengths) + a pairs manifest and an MCQ JSONL set."""
    from spikelight.datamodules.video import MCQItem, write_jsonl, write_mcq_jsonl, write_video

    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    paths = []
    for i, n in enumerate((6, 8, 5, 7)):
        frames = rng.integers(0, 255, size=(n, 32, 32, 3), dtype=np.uint8)
        paths.append(str(write_video(root / f"clip{i}.mp4", frames, fps=4)))
    pairs = [{"video": p, "prompt": "what colour flashed ?", "answer": a}
             for p, a in zip(paths, ["red", "blue green", "yellow", "white"])]
    write_jsonl(root / "pairs.jsonl", pairs)
    items = [MCQItem(p, "which object moved ?", ("cube", "sphere", "none")[: 2 + i % 2], i % 2,
                     task_type=("order", "count")[i % 2], duration_class=("short", "long")[i // 2], qid=f"q{i}")
             for i, p in enumerate(paths)]
    write_mcq_jsonl(root / "setA.jsonl", items)
    write_mcq_jsonl(root / "setB.jsonl", items[:2])
    return root


def make_task(folder, **kw):
    task = LVCAlign(vlm=str(folder), **kw)
    task.configure_model()
    return task


def mcq_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"frames": torch.randn(2, 5, 3, 64, 64, generator=g),
            "frames_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool),
            "video": ["a.mp4", "b.mp4"], "question": ["what colour flashed ?", "how many times ?"],
            "options": [["red", "green", "blue"], ["once", "twice three", "four", "none"]],
            "answer_index": torch.tensor([0, 2]), "task_type": ["colour", "count"],
            "duration_class": ["short", "long"], "qid": ["q1", "q2"], "duration": torch.tensor([3.0, math.nan])}


def pair_batch(seed=0):
    b = mcq_batch(seed)
    for k in ("options", "answer_index", "question", "task_type", "duration_class", "qid", "duration"):
        b.pop(k)
    b["prompt"], b["answer"] = ["what is the colour ?", "what moved ?"], ["red", "object moved left"]
    return b


def trainer(tmp_path, **kw):
    import lightning.pytorch as pl

    args = dict(max_steps=2, max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                default_root_dir=str(tmp_path), limit_val_batches=0)
    args.update(kw)
    return pl.Trainer(**args)


def pairs_dm(videos, **kw):
    from spikelight.datamodules.video import VideoTextDataModule

    args = dict(train_manifest=str(videos / "pairs.jsonl"), num_frames=4, image_size=64, batch_size=2)
    args.update(kw)
    return VideoTextDataModule(**args)


def mcq_dm(videos, **kw):
    from spikelight.datamodules.video import VideoMCQDataModule

    args = dict(annotations={"setA": str(videos / "setA.jsonl"), "setB": str(videos / "setB.jsonl")},
                num_frames=4, image_size=64, batch_size=2)
    args.update(kw)
    return VideoMCQDataModule(**args)


# ---------------------------------------------------------------------------------------- training
def test_only_alignment_layer_trains_and_changes(folder, videos, tmp_path):
    task = make_task(folder, window=2, optimizer=lambda p: torch.optim.SGD(p, lr=1.0))
    assert list(task.state_dict()) and all(k.startswith("projector.") for k in task.state_dict())
    vlm = task.vlm
    proj_ids = {id(p) for p in task.projector.parameters()}
    before = {n: p.detach().clone() for n, p in vlm.named_parameters()}
    frozen_bufs = {n: b.detach().clone() for n, b in vlm.named_buffers()}
    from lightning.pytorch.loggers import CSVLogger

    trainer(tmp_path, logger=CSVLogger(tmp_path, name="csv")).fit(task, datamodule=pairs_dm(videos))
    assert task.trainable_params == sum(p.numel() for p in vlm.alignment_layer.parameters())
    logged = (next(tmp_path.rglob("metrics.csv"))).read_text()
    assert "model/trainable_params" in logged and str(task.trainable_params) in logged
    changed = [n for n, p in vlm.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all(id(dict(vlm.named_parameters())[n]) in proj_ids for n in changed)
    assert all(torch.equal(p, before[n]) for n, p in vlm.named_parameters() if id(p) not in proj_ids)
    assert all(torch.equal(b, frozen_bufs[n]) for n, b in vlm.named_buffers())


def test_fit_refuses_other_trainable_weights(folder):
    task = make_task(folder)
    task.vlm.language_model.layers[0].mlp.requires_grad_(True)
    with pytest.raises(RuntimeError, match="only the alignment layer may train.*layers.0.mlp"):
        task.on_fit_start()
    task.vlm.set_trainable("align")
    task.on_fit_start()  # fine again
    assert task.trainable_params == sum(p.numel() for p in task.projector.parameters())


def test_loss_is_answer_tokens_only(folder):
    task = make_task(folder, window=1)  # no compression: the vanilla transformers forward applies
    batch = pair_batch()
    inputs = task.training_inputs(batch)
    ids, labels = inputs["input_ids"], inputs["labels"]
    tok = task.tokenizer
    for i, ans in enumerate(batch["answer"]):  # labels hold exactly " answer </s>", the rest is -100
        kept = labels[i][labels[i] != -100].tolist()
        assert kept == tok(" " + ans, add_special_tokens=False).input_ids + [tok.eos_token_id]
        assert not (labels[i][ids[i] == task.vlm.image_token_id] != -100).any()
    with torch.no_grad():
        pixels = batch["frames"][batch["frames_mask"]]
        logits = task.vlm.model(input_ids=ids, attention_mask=inputs["attention_mask"], pixel_values=pixels).logits
        hf_loss = task.vlm.model(input_ids=ids, attention_mask=inputs["attention_mask"], pixel_values=pixels,
                                 labels=labels).loss
        ours = task.loss(batch)
    terms = [-F.log_softmax(logits[b, j - 1].double(), -1)[ids[b, j]]
             for b in range(ids.shape[0]) for j in range(ids.shape[1]) if labels[b, j] != -100]
    hand = torch.stack(terms).mean()
    assert len(terms) == sum(len(tok(" " + a).input_ids) + 1 for a in batch["answer"])
    assert torch.allclose(ours.double(), hand, atol=1e-5) and torch.allclose(hf_loss.double(), hand, atol=1e-5)


# ---------------------------------------------------------------------------------------- MCQ scoring
def direct_scores(task, batch, mean=False):
    """Each option scored by a full forward of prompt + option (no KV cache)."""
    prompts, questions = task.prompts(batch)
    out = []
    for i, opts in enumerate(batch["options"]):
        row = []
        for o in opts:
            target = task._target_ids(o)
            ids = torch.tensor([prompts[i] + target])
            one = {key: (v[i : i + 1] if isinstance(v, torch.Tensor) else v[i : i + 1]) for key, v in batch.items()}
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                      "question_ids": torch.tensor([questions[i]]), "question_mask": torch.ones(1, len(questions[i]))}
            with torch.no_grad():
                logp = F.log_softmax(task._run(one, inputs).logits[0].double(), -1)
            p = len(prompts[i])
            s = sum(logp[p + j - 1, t] for j, t in enumerate(target))
            row.append(float(s / len(target) if mean else s))
        out.append(row)
    return out


@pytest.mark.parametrize("window,mode", [(2, "sum"), (1, "mean")])
def test_option_likelihood_equals_direct_computation(folder, window, mode):
    task = make_task(folder, window=window, option_score=mode)
    batch = mcq_batch()
    got = task.option_scores(batch)
    want = direct_scores(task, batch, mean=(mode == "mean"))
    assert [len(r) for r in got] == [3, 4]
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(want), atol=1e-4)


def test_option_likelihood_llava_onevision(tmp_path):
    folder = build_tiny_vlm("llava_onevision", tmp_path / "tiny-llava", words=WORDS, seed=0)
    task = make_task(folder, window=2)
    batch = mcq_batch()
    np.testing.assert_allclose(np.concatenate(task.option_scores(batch)),
                               np.concatenate(direct_scores(task, batch)), atol=1e-4)


def test_gradient_checkpointing_and_bf16(folder):
    plain, ckpt = make_task(folder, window=2), make_task(folder, window=2, gradient_checkpointing=True)
    batch = pair_batch()
    for t in (plain, ckpt):
        t.vlm.train(True)
        t.loss(batch).backward()
    assert ckpt.vlm.gradient_checkpointing
    for a, b in zip(plain.projector.parameters(), ckpt.projector.parameters()):
        assert a.grad is not None and torch.allclose(a.grad, b.grad, atol=1e-6)
    bf16 = make_task(folder, window=2, dtype="bfloat16")
    assert next(bf16.vlm.language_model.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bf16.projector.parameters())  # float32 master weights
    with torch.no_grad():
        assert abs(bf16.loss(batch).item() - plain.loss(batch).item()) < 0.05


def boost(task, word, amount=50.0):
    """Force the tiny LLM to favour ``word``'s token (a hook on the LM head)."""
    tid = task.tokenizer.convert_tokens_to_ids(word)
    bias = torch.zeros(task.vlm.model.lm_head.out_features)
    bias[tid] = amount
    return task.vlm.model.lm_head.register_forward_hook(lambda m, i, o: o + bias.to(o.dtype))


def test_known_answers_scored_and_accuracy_by_type(folder):
    task = make_task(folder)
    batch = mcq_batch()  # answers: "red" (q1), "four" (q2)
    handles = [boost(task, "red"), boost(task, "once")]  # q1 right, q2 wrong (answer "four")
    try:
        records = task.score_batch(batch)
    finally:
        for h in handles:
            h.remove()
    assert [r["pred"] for r in records] == [0, 0] and [r["correct"] for r in records] == [True, False]
    assert records[0]["scores"][0] == max(records[0]["scores"])
    assert records[1]["duration"] is None and records[0]["duration"] == 3.0
    acc = accuracy_summary(records)
    assert acc == {"acc": 0.5, "acc_colour": 1.0, "acc_count": 0.0, "acc_duration_short": 1.0,
                   "acc_duration_long": 0.0, "count": 2.0}


def test_generation_mode_parses_letters(folder):
    task = make_task(folder, mcq_mode="generate", max_new_tokens=3)
    batch = mcq_batch()
    handle = boost(task, "C")
    try:
        records = task.score_batch(batch)
    finally:
        handle.remove()
    assert [r["output"] for r in records] == ["C C C", "C C C"]
    assert [r["pred"] for r in records] == [2, 2] and [r["correct"] for r in records] == [False, True]


def test_parse_letter():
    cases = {"B": 1, "(C) blue": 2, "A. red": 0, "The answer is D.": 3, "answer: b": 1, "I think (B)": 1,
             "E": None, "none of them": None, "": None, " C\n": 2}
    for text, want in cases.items():
        assert parse_letter(text, 4) == want, text


def test_validate_logs_accuracy_and_predictions_roundtrip(folder, videos, tmp_path):
    task = make_task(folder)
    dm = mcq_dm(videos)
    metrics = trainer(tmp_path, limit_val_batches=1.0).validate(task, datamodule=dm)
    files = {p.name: p for p in (tmp_path / "predictions").glob("*.jsonl")}
    assert set(files) == {"val-setA.jsonl", "val-setB.jsonl"}
    recs = [json.loads(line) for line in files["val-setA.jsonl"].read_text().splitlines()]
    assert [r["qid"] for r in recs] == ["q0", "q1", "q2", "q3"] and [r["answer_index"] for r in recs] == [0, 1, 0, 1]
    for r in recs:
        assert r["correct"] == (r["pred"] == r["answer_index"]) and r["pred"] == int(np.argmax(r["scores"]))
    flat = {k: v for m in metrics for k, v in m.items()}
    for k, v in accuracy_summary(recs).items():
        if k != "count":
            assert flat[f"val/{k}"] == pytest.approx(v)
    recs_b = [json.loads(line) for line in files["val-setB.jsonl"].read_text().splitlines()]
    assert flat["val_setB/acc"] == pytest.approx(accuracy_summary(recs_b)["acc"])
    # predict returns the same records (as columns)
    preds = trainer(tmp_path).predict(task, dataloaders=dm.val_dataloader()[0])
    cols = {k: [v for p in preds for v in p[k]] for k in preds[0]}
    assert cols["pred"] == [r["pred"] for r in recs] and cols["qid"] == [r["qid"] for r in recs]
    np.testing.assert_allclose(np.concatenate(cols["scores"]), np.concatenate([r["scores"] for r in recs]), atol=1e-5)


# ---------------------------------------------------------------------------------------- checkpoints, cache
def test_checkpoint_holds_projector_only_and_resumes_to_same_loss(folder, videos, tmp_path):
    sgd = dict(optimizer=lambda p: torch.optim.SGD(p, lr=0.5), scheduler="constant")
    task = make_task(folder, window=2, **sgd)
    t = trainer(tmp_path)
    t.fit(task, datamodule=pairs_dm(videos))
    path = tmp_path / "lvc.ckpt"
    t.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert sorted(ckpt["state_dict"]) == sorted(f"projector.{k}" for k in task.projector.state_dict())
    assert ckpt["frozen_modules"]["vlm"]["vlm"] == str(folder)
    assert ckpt["hyper_parameters"]["vlm"] == str(folder) and "revision" in ckpt["hyper_parameters"]
    batch = pair_batch(1)
    with torch.no_grad():
        trained = task.loss(batch)
        restored = LVCAlign.load_from_checkpoint(path).loss(batch)
        fresh = make_task(folder, window=2).loss(batch)
    assert torch.equal(trained, restored) and not torch.allclose(trained, fresh)
    with torch.no_grad():  # evaluation configs start from the tuned projector with projector_weights
        assert torch.equal(make_task(folder, window=2, projector_weights=str(path)).loss(batch), trained)
    # a Lightning resume (ckpt_path) restores the projector and the optimizer into a fresh task
    again = LVCAlign(vlm=str(folder), window=2, **sgd)
    t2 = trainer(tmp_path, max_steps=3, max_epochs=2)
    t2.fit(again, datamodule=pairs_dm(videos), ckpt_path=path)
    assert t2.global_step == 3 and not torch.equal(again.projector.linear_1.weight, task.projector.linear_1.weight)


def test_feature_cache_skips_vision_tower_after_first_epoch(folder, videos, tmp_path):
    task = make_task(folder, feature_cache=str(tmp_path / "fcache"))
    calls = []
    vlm = task.vlm
    original = vlm.vision_features
    vlm.vision_features = lambda x: calls.append(x.shape[0]) or original(x)
    trainer(tmp_path, max_steps=-1, max_epochs=2).fit(task, datamodule=pairs_dm(videos))
    cache = task._feature_cache()
    assert cache.writes == 4 and cache.hits == 4 and sum(calls) == 4 * 4  # epoch 2: no vision-tower call
    del vlm.vision_features
    dm = pairs_dm(videos, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    nocache = make_task(folder)
    nocache.projector.load_state_dict(task.projector.state_dict())
    with torch.no_grad():
        cached, direct = task.loss(batch), nocache.loss(batch)
    assert cache.hits == 8 and torch.allclose(cached, direct, atol=1e-6)


# ---------------------------------------------------------------------------------------- configs
REAL = ["internvl2_align10k.yaml", "mlvu_eval.yaml", "videomme_eval.yaml", "fsdp.yaml"]


def _overrides(name, folder, videos, tmp_path):
    smoke = (yaml.safe_load((REPO / "experiments" / "lvc" / name).read_text()) or {}).get("smoke") or {}
    over = dict(smoke.get("overrides") or {})
    over["model.init_args.vlm"] = str(folder)
    over["data.init_args.processor"] = str(folder)  # the model's own processor from the local folder
    if "VideoTextDataModule" in (REPO / "experiments" / "lvc" / name).read_text():
        over["data.init_args.train_manifest"] = str(videos / "pairs.jsonl")
        over["data.init_args.video_root"] = None
    else:
        over["data.init_args.annotations"] = {"setA": str(videos / "setA.jsonl")}
        over["data.init_args.format"] = "mcq"
        over["data.init_args.video_root"] = None
    args = []
    for k, v in over.items():
        args += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
    return args


@pytest.mark.parametrize("name", REAL)
def test_real_configs_print_and_start_on_tiny_model(name, folder, videos, tmp_path, monkeypatch, capsys):
    from spikelight.cli import SpikelightCLI

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    cfg = ["--config", str(REPO / "experiments" / "lvc" / name), "--run_root", str(tmp_path / "runs"),
           *_overrides(name, folder, videos, tmp_path)]
    with pytest.raises(SystemExit):
        SpikelightCLI(args=["fit", *cfg, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].endswith("LVCAlign") and printed["model"]["init_args"]["vlm"] == str(folder)
    short = ["--trainer.max_steps", "1", "--trainer.limit_train_batches", "1", "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
             "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.max_epochs", "1"]
    if name in ("internvl2_align10k.yaml", "fsdp.yaml"):
        run = SpikelightCLI(args=["fit", *cfg, *short])
        assert run.trainer.global_step == 1 and run.model.trainable_params > 0
    else:
        SpikelightCLI(args=["validate", *cfg, *short, "--trainer.limit_val_batches", "1"])
        assert any((tmp_path / "runs").rglob("val-setA.jsonl")), sorted(map(str, tmp_path.rglob("*")))


def test_fsdp_strategy_constructs_from_config():
    import jsonargparse
    from lightning.pytorch.plugins.precision import FSDPPrecision
    from lightning.pytorch.strategies import FSDPStrategy, Strategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    cfg = yaml.safe_load((REPO / "experiments" / "lvc" / "fsdp.yaml").read_text())
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    strategy = parser.instantiate_classes(parser.parse_object({"strategy": cfg["trainer"]["strategy"]})).strategy
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)
    assert {LlamaDecoderLayer, Qwen2DecoderLayer} <= set(policy._module_classes)
    assert strategy.kwargs["use_orig_params"] is True
    assert cfg["trainer"]["precision"] == "bf16-mixed" and cfg["trainer"]["accelerator"] == "gpu"
    mp = FSDPPrecision("bf16-mixed").mixed_precision_config
    assert mp.param_dtype == torch.bfloat16 and mp.reduce_dtype == torch.bfloat16
