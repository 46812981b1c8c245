"""3D question answering (spikelight.tasks.point_qa, models.point_llm, datamodules.pointcloud.qa): only the
alignment layer trains (the SVL-pretrained encoder and the LM stay bit-identical, buffers included), the loss
is the LM's CE over the answer tokens only, left-padded generation equals one-by-one generation, checkpoints
hold no frozen weight and reload to the same loss, the JSONL DataModule reads its format and reports a
missing points file with its path before training, and the synthetic config runs end to end (fit, then
validate with exact-match accuracy of generated answers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from spikelight.datamodules.base import DataError
from spikelight.datamodules.pointcloud.qa import (
    PointQAJsonlDataModule,
    SyntheticPointQADataModule,
    generate_qa_split,
    qa_words,
    read_qa_jsonl,
    write_qa_jsonl,
)
from spikelight.models import create_model
from spikelight.models.point_llm import build_tiny_lm, normalize_answer, save_encoder_checkpoint
from spikelight.tasks.point_qa import PointQA

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
ENCODER = {"name": "spike_pointnet_test", "embed_dim": 32}
CATS = ("chair", "car", "mug")


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("lm") / "tiny-lm", words=qa_words(CATS), hidden=32, seed=0)


@pytest.fixture(scope="module")
def svl_ckpt(tmp_path_factory):
    """An SVL-style checkpoint: encoder.* (random weights, non-trivial BatchNorm statistics) + align.*."""
    torch.manual_seed(1)
    enc = create_model(**ENCODER)
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    path = save_encoder_checkpoint(enc, tmp_path_factory.mktemp("svl") / "svl.ckpt", spec=ENCODER)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["align.logit_scale"] = torch.tensor(2.0)
    torch.save(ckpt, path)
    return path


def dm(**kw):
    args = dict(num_train=8, num_val=4, num_points=64, batch_size=4, categories=CATS)
    args.update(kw)
    return SyntheticPointQADataModule(**args)


def make_task(lm_folder, svl_ckpt=None, **kw):
    task = PointQA(lm=str(lm_folder), encoder=ENCODER, encoder_weights=None if svl_ckpt is None else str(svl_ckpt),
                   num_tokens=2, **kw)
    task.configure_model()
    return task


def trainer(tmp_path, **kw):
    import lightning.pytorch as pl

    args = dict(max_steps=2, max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                default_root_dir=str(tmp_path), limit_val_batches=0)
    args.update(kw)
    return pl.Trainer(**args)


def batch(seed=0, n=3):
    recs = generate_qa_split(n, split_id=5, seed=seed, categories=CATS, num_points=64)
    return {"points": torch.stack([torch.from_numpy(r["points"]) for r in recs]),
            "question": [r["question"] for r in recs], "answer": [r["answer"] for r in recs],
            "qtype": [r["qtype"] for r in recs], "qid": [r["qid"] for r in recs]}


# ---------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("train_encoder", [False, True])
def test_only_alignment_layer_trains(lm_folder, svl_ckpt, tmp_path, train_encoder):
    task = make_task(lm_folder, svl_ckpt, train_encoder=train_encoder,
                     optimizer=lambda p: torch.optim.SGD(p, lr=1.0), scheduler="constant")
    model = task.point_llm
    file_state = torch.load(svl_ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(v, file_state[f"encoder.{k}"]) for k, v in model.encoder.state_dict().items())
    before = {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}
    trainer(tmp_path).fit(task, datamodule=dm())
    after = dict([*model.named_parameters(), *model.named_buffers()])
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    proj = {n for n in before if n.startswith("projector.") and n.endswith("weight")}
    assert proj <= changed  # the alignment layer changed
    assert not {n for n in changed if n.startswith("lm.")}  # the LM is bit-identical
    enc_changed = {n for n in changed if n.startswith("encoder.")}
    if train_encoder:
        assert enc_changed and task.trainable_params == sum(p.numel() for p in task.parameters())
        assert any(k.startswith("encoder.") for k in task.state_dict())
    else:  # frozen encoder: weights and BatchNorm statistics untouched (eval mode)
        assert not enc_changed and not model.encoder.training
        assert task.trainable_params == sum(p.numel() for p in task.projector.parameters())
        assert all(k.startswith("projector.") for k in task.state_dict())


def test_fit_refuses_other_trainable_weights(lm_folder):
    task = make_task(lm_folder)
    task.point_llm.lm.model.layers[0].mlp.requires_grad_(True)
    with pytest.raises(RuntimeError, match=r"only the alignment layer may train.*layers\.0\.mlp"):
        task.on_fit_start()
    task.point_llm.set_trainable("align")
    task.on_fit_start()


def test_loss_is_answer_tokens_only(lm_folder):
    task = make_task(lm_folder)
    model, b = task.point_llm, batch()
    inputs = model.training_inputs(b["points"], b["question"], b["answer"])
    labels, mask = inputs["labels"], inputs["attention_mask"]
    for i, a in enumerate(b["answer"]):  # labels: the answer words + EOS, nothing else
        kept = labels[i][labels[i] != -100].tolist()
        assert kept == model.target_ids(a) and kept[-1] == model.tokenizer.eos_token_id
        assert int(mask[i].sum()) == len(model.prompt_ids(b["question"][i])) + len(kept)
    with torch.no_grad():
        ours = model.loss(b["points"], b["question"], b["answer"])
        ref = model.lm(inputs_embeds=inputs["inputs_embeds"], attention_mask=mask, labels=labels).loss
    assert torch.allclose(ours, ref, atol=1e-5)
    # the point tokens sit where the prompt's -1 slots are
    slots = [j for j, t in enumerate(model.prompt_ids(b["question"][0])) if t < 0]
    tokens = model.point_tokens(b["points"])
    assert len(slots) == 2 and torch.allclose(inputs["inputs_embeds"][0, slots], tokens[0], atol=1e-6)


def test_left_padded_generation_equals_one_by_one(lm_folder):
    task = make_task(lm_folder)
    b = batch(n=3)
    b["question"] = ["what is the object ?", "how many objects are in the scene ?", "what size is the object ?"]
    gen = dict(max_new_tokens=4, min_new_tokens=4)  # generation options pass through to transformers
    together = task.point_llm.generate_ids(b["points"], b["question"], **gen)
    alone = torch.cat([task.point_llm.generate_ids(b["points"][i : i + 1], [q], **gen)
                       for i, q in enumerate(b["question"])])
    assert together.shape == (3, 4) and torch.equal(together, alone)
    assert len(set(map(tuple, together.tolist()))) > 1  # the answers depend on the prompt
    text = task.point_llm.generate(b["points"], b["question"], **gen)
    assert text == [task.point_llm.tokenizer.decode(r, skip_special_tokens=True).strip() for r in together]
    assert normalize_answer(" Red.</s>") == "red"


def test_exact_match_records(lm_folder, monkeypatch):
    task = make_task(lm_folder)
    b = batch(n=3)
    outputs = [b["answer"][0] + " .", "nonsense", b["answer"][2].upper()]
    monkeypatch.setattr(task, "generate", lambda _b: outputs)
    recs = task.score_batch(b)
    assert [r["correct"] for r in recs] == [True, False, True]
    assert [r["output"] for r in recs] == outputs and [r["qid"] for r in recs] == b["qid"]


def test_checkpoint_holds_no_frozen_weight_and_reloads_to_same_loss(lm_folder, svl_ckpt, tmp_path):
    task = make_task(lm_folder, svl_ckpt, optimizer=lambda p: torch.optim.SGD(p, lr=0.5), scheduler="constant")
    t = trainer(tmp_path)
    t.fit(task, datamodule=dm())
    path = tmp_path / "qa.ckpt"
    t.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert sorted(ckpt["state_dict"]) == sorted(f"projector.{k}" for k in task.projector.state_dict())
    assert ckpt["frozen_modules"]["point_llm"]["lm"] == str(lm_folder)
    b = batch(1)
    with torch.no_grad():
        trained = task.loss(b)
        restored = PointQA.load_from_checkpoint(path).loss(b)
        fresh = make_task(lm_folder, svl_ckpt).loss(b)
    assert torch.equal(trained, restored) and not torch.allclose(trained, fresh)


# ---------------------------------------------------------------------------------------- data
def test_jsonl_datamodule_reads_format_and_reports_missing_points(tmp_path):
    recs = generate_qa_split(5, split_id=0, seed=0, categories=CATS, num_points=48)
    train = write_qa_jsonl(tmp_path / "qa" / "train.jsonl", recs)
    lines = [json.loads(x) for x in train.read_text().splitlines()]
    assert lines[0]["points"] == f"points/{recs[0]['qid']}.npy" and {"question", "answer", "type"} <= set(lines[0])
    read = read_qa_jsonl(train)
    assert [r["answer"] for r in read] == [r["answer"] for r in recs]
    data = PointQAJsonlDataModule(train=str(train), val={"a": str(train)}, num_points=None, batch_size=2)
    data.setup("fit")
    b = next(iter(data.val_dataloader()[0]))
    assert b["points"].shape == (2, 48, 6) and torch.equal(b["points"][0], torch.from_numpy(recs[0]["points"]))
    assert b["question"] == [r["question"] for r in recs[:2]] and b["qtype"] == [r["qtype"] for r in recs[:2]]
    assert [s.name for s in data.eval_sets()] == ["a"]
    # a missing points file: DataError naming the JSONL, the line and the missing file, at setup
    (tmp_path / "qa" / "points" / f"{recs[3]['qid']}.npy").unlink()
    missing = tmp_path / "qa" / "points" / f"{recs[3]['qid']}.npy"
    with pytest.raises(DataError, match=rf"train\.jsonl: line 4: points file not found: .*{missing.name}"):
        PointQAJsonlDataModule(train=str(train), batch_size=2).setup("fit")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"points": "x.npy", "question": "q ?"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 1: missing key\(s\) \['answer'\]"):
        read_qa_jsonl(bad)


def test_synthetic_records_answer_the_scene():
    recs = generate_qa_split(8, split_id=0, seed=0, categories=CATS, num_points=96)
    assert [r["qtype"] for r in recs] == ["category", "colour", "size", "count"] * 2
    for r in recs:
        objs, pts = r["objects"], r["points"]
        assert pts.shape == (96, 6) and np.isfinite(pts).all()
        if r["qtype"] == "count":
            assert r["answer"] == ("one", "two", "three")[len(objs) - 1]
        else:
            assert len(objs) == 1
            key = {"category": "category", "colour": "colour"}.get(r["qtype"])
            if key:
                assert r["answer"] == objs[0][key]
            else:  # the size class matches the object's extent in the (unnormalised) scene frame
                extent = float(np.linalg.norm(pts[:, :3] - pts[:, :3].mean(0), axis=1).max())
                assert r["answer"] == ("small" if extent < 0.45 else "medium" if extent < 0.7 else "large")
    # the held-out split holds other objects
    val = generate_qa_split(8, split_id=1, seed=0, categories=CATS, num_points=96)
    assert not any(np.array_equal(a["points"], b["points"]) for a in recs for b in val)


# ---------------------------------------------------------------------------------------- config, end to end
def test_synthetic_config_fits_then_validates(tmp_path, monkeypatch, capsys):
    from spikelight.cli import SpikelightCLI

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    config = REPO / "experiments" / "svl_downstream" / "synthetic_qa.yaml"
    over = dict(yaml.safe_load(config.read_text())["smoke"]["overrides"])
    over["data.init_args.base_steps"] = 2  # the base model's two stages run (2 steps each)
    over["data.init_args.base_options"] = {**over["data.init_args.base_options"], "encoder_steps": 2, "batch_size": 4}
    over["data.init_args.eval_train"] = 4
    args = ["--config", str(config), "--run_root", str(tmp_path / "runs")]
    for k, v in over.items():
        args += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
    common = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false"]
    run = SpikelightCLI(args=["fit", *args, *common, "--trainer.max_steps", "3", "--trainer.max_epochs", "2",
                              "--trainer.limit_val_batches", "1"])
    assert run.trainer.global_step == 3 and run.model.trainable_params > 0
    stamp = json.loads((tmp_path / "qa_base" / "spikelight_pretrain.json").read_text())
    assert stamp["steps"] == 2 and stamp["encoder_stage"]["encoder_steps"] == 2
    capsys.readouterr()
    SpikelightCLI(args=["validate", *args, *common, "--ckpt_path", "last"])
    out = capsys.readouterr().out
    assert "val/acc" in out and "val_train_seen/acc" in out and "val/loss" in out
    preds = next((tmp_path / "runs").rglob("val-heldout.jsonl")).read_text().splitlines()
    rec = json.loads(preds[0])
    assert len(preds) == 4 and {"qid", "qtype", "question", "answer", "output", "correct"} <= set(rec)


def test_encoder_spec_read_from_svl_weights(lm_folder, svl_ckpt):
    task = PointQA(lm=str(lm_folder), encoder=None, encoder_weights=str(svl_ckpt), num_tokens=2)
    enc = task.point_llm.encoder
    assert enc.embed_dim == ENCODER["embed_dim"] and not any(p.requires_grad for p in enc.parameters())
    with pytest.raises(ValueError, match="encoder spec"):
        PointQA(lm=str(lm_folder))


def test_bf16_lm_float32_alignment_layer(lm_folder):
    task = make_task(lm_folder, dtype="bfloat16")
    assert task.point_llm.lm.dtype == torch.bfloat16 and task.projector.fc1.weight.dtype == torch.float32
    b = batch(n=2)
    loss = task.loss(b)
    loss.backward()
    assert torch.isfinite(loss) and task.projector.fc1.weight.grad.dtype == torch.float32
    assert len(task.generate(b)) == 2
