"""PointClassify (SVL downstream fine-tuning) and spikelight.models.pretrained: exact loading of SVL
checkpoints and Rep-VLI deploy models, clear errors, deploy-initialised heads, the multistep recipe,
checkpoints that rebuild without the pretrained file, and a fit on the shared real ModelNet40 files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from spikelight.datamodules.base import collate_dict
from spikelight.models import build_model
from spikelight.models.pretrained import load_deploy_head, load_pretrained_encoder, pretrained_encoder_spec
from spikelight.tasks.point_classify import PointClassify, multistep_lambda

pytestmark = pytest.mark.usefixtures("one_thread")

ENC = {"name": "spike_pointnet_test", "embed_dim": 16, "input_transform": False, "feature_transform": False}


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Move every float tensor (parameters and BN statistics) away from its initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in module.state_dict().values():
            if v.is_floating_point():
                v.add_(torch.rand(v.shape, generator=g) * 0.5 + 0.1)


@pytest.fixture(scope="module")
def svl_ckpt(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint written by Lightning for SVLPretrain (towers are lazy: never built here)."""
    from spikelight.tasks.svl_pretrain import SVLPretrain

    task = SVLPretrain(encoder=dict(ENC), clip_model="spikelight-tiny-clip", text_model=None)
    _perturb(task.encoder, 0)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.strategy.connect(task)
    path = tmp_path_factory.mktemp("svl") / "svl.ckpt"
    trainer.save_checkpoint(path)
    assert not task.frozen_is_built("towers")
    return path, {k: v.clone() for k, v in task.encoder.state_dict().items()}


def _batches(n: int, *, K: int, F: int = 6, T: int | None = None, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    shape = (64, F) if T is None else (T, 64, F)
    return [{"points": torch.rand(shape, generator=g), "label": int(torch.randint(0, K, (1,), generator=g))}
            for _ in range(n)]


def _trainer(tmp_path, **kw) -> Trainer:
    args = dict(default_root_dir=str(tmp_path), accelerator="cpu", devices=1, logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                num_sanity_val_steps=0)
    args.update(kw)
    return Trainer(**args)


# ---------------------------------------------------------------------------------------------- loading
def test_svl_checkpoint_loads_exactly(svl_ckpt):
    path, want = svl_ckpt
    task = PointClassify(encoder=dict(ENC), num_classes=5, pretrained=str(path))
    got = task.encoder.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    fresh = build_model(dict(ENC)).state_dict()
    assert any(not torch.equal(fresh[k], want[k]) for k in want if want[k].is_floating_point())
    rep = task.pretrained_report
    assert rep["source"] == "svl_checkpoint" and rep["prefix"] == "encoder." and rep["loaded"] == len(want)
    # the spec recorded in the checkpoint (embed_dim resolved as SVLPretrain does) rebuilds the same encoder
    assert pretrained_encoder_spec(path) == ENC
    task2 = PointClassify(encoder=None, encoder_overrides={"timesteps": 3}, num_classes=5, pretrained=str(path))
    assert task2.encoder.timesteps == 3
    assert all(torch.equal(task2.encoder.state_dict()[k], want[k]) for k in want)


def test_mismatches_raise_naming_file_and_keys(svl_ckpt, tmp_path):
    path, _ = svl_ckpt
    enc = build_model({**ENC, "embed_dim": 8})
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with pytest.raises(ValueError) as e:
        load_pretrained_encoder(enc, path)
    msg = str(e.value)
    assert str(path) in msg and "head.out.weight" in msg and "(16, 16) vs (8, 16)" in msg
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())  # nothing half-loaded
    with pytest.raises(ValueError, match="no tensor of the file matches the encoder E3DSNN"):
        load_pretrained_encoder(build_model("e3dsnn_test"), path)
    # an encoder with an extra part: the keys missing from the file are named
    with pytest.raises(ValueError, match=r"missing from the file: \['input_tnet"):
        load_pretrained_encoder(build_model({**ENC, "input_transform": True}), path)
    with pytest.raises(ValueError, match="unexpected in the file"):
        load_pretrained_encoder(build_model(dict(ENC)), path, prefix="")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=str(bad)):
        PointClassify(encoder=dict(ENC), num_classes=5, pretrained=str(bad))
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_pretrained_encoder(enc, tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="not a Rep-VLI deploy model"):
        load_deploy_head(path)


def test_deploy_model_initialises_encoder_and_head(svl_ckpt, tmp_path):
    from spikelight.deploy import load_deploy, save_deploy

    _, want = svl_ckpt
    enc = build_model(dict(ENC))
    enc.load_state_dict(want)
    names = ["chair", "table", "lamp", "sofa"]
    W = torch.randn(4, 16) * 5
    save_deploy(tmp_path / "deploy", encoder=enc, encoder_spec=dict(ENC), weight=W, class_names=names)
    task = PointClassify(encoder=None, pretrained=str(tmp_path / "deploy"), head_init="deploy").eval()
    assert task.num_classes == 4 and task.class_names == names and task.normalize_embedding
    assert torch.equal(task.head.weight, W) and not task.head.bias.any()
    assert all(torch.equal(task.encoder.state_dict()[k], want[k]) for k in want)
    pts = torch.rand(3, 64, 6)
    deployed = load_deploy(tmp_path / "deploy")
    with torch.no_grad():
        assert torch.equal(task(pts).argmax(-1), deployed.predict(pts)[0])
        deployed.normalize_input = True  # the full model's zero-shot logits
        torch.testing.assert_close(task(pts), deployed(pts))
    # the DataModule's class order: rows permuted; other names: a clear error
    task._align_deploy_rows(["sofa", "chair", "table", "lamp"])
    assert torch.equal(task.head.weight, W[[3, 0, 1, 2]])
    with pytest.raises(ValueError, match="bed"):
        task._align_deploy_rows(["sofa", "chair", "table", "bed"])
    with pytest.raises(ValueError, match="4 classes"):
        PointClassify(encoder=None, num_classes=5, pretrained=str(tmp_path / "deploy"), head_init="deploy")
    with pytest.raises(ValueError, match="needs pretrained"):
        PointClassify(encoder=dict(ENC), num_classes=4, head_init="deploy")
    # linear probe: only the head is optimised, the encoder (BN statistics included) stays in eval mode
    probe = PointClassify(encoder=None, pretrained=str(tmp_path / "deploy"), head_init="deploy",
                          freeze_encoder=True).train()
    assert not probe.encoder.training and probe.head.training
    assert {id(p) for p in probe.parameters_to_optimize()} == {id(p) for p in probe.head.parameters()}


# ---------------------------------------------------------------------------------------------- training
def test_multistep_lambda():
    f = multistep_lambda(total_steps=10, milestones=(0.6, 0.8), gamma=0.1)
    assert [f(s) for s in (0, 5, 6, 7, 8, 9)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    w = multistep_lambda(total_steps=10, milestones=(0.6,), gamma=0.5, warmup_steps=4, warmup_start_factor=0.2)
    assert [w(s) for s in (0, 2, 4, 6)] == pytest.approx([0.2, 0.6, 1.0, 0.5])


def test_fit_recipe_and_checkpoint_rebuilds_without_pretrained_file(svl_ckpt, tmp_path):
    import shutil

    src, _ = svl_ckpt
    ckpt_in = tmp_path / "svl_copy.ckpt"
    shutil.copy(src, ckpt_in)
    torch.manual_seed(0)
    task = PointClassify(encoder=dict(ENC), num_classes=3, pretrained=str(ckpt_in))
    loader = DataLoader(_batches(10, K=3), batch_size=2, collate_fn=collate_dict)
    val = DataLoader(_batches(4, K=3, seed=1), batch_size=2, collate_fn=collate_dict)
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=5)
    trainer.fit(task, train_dataloaders=loader, val_dataloaders=val)
    opt = trainer.optimizers[0]
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    assert opt.defaults["weight_decay"] == 1e-3
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.01)  # 5 steps: past 60% and 80%
    m = trainer.callback_metrics
    assert {"train/loss", "val/loss", "val/top1", "val/mean_class_acc"} <= set(m)
    assert task.confusion_matrices["val"].matrix.sum() == 4
    out = tmp_path / "task.ckpt"
    trainer.save_checkpoint(out)
    ckpt_in.unlink()  # the checkpoint must not need it
    back = PointClassify.load_from_checkpoint(out, weights_only=True)
    assert back.hparams.pretrained is None and back.encoder_spec == ENC
    for k, v in task.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert torch.load(out, weights_only=True)["pretrained_from"]["source"] == "svl_checkpoint"
    # a PointClassify checkpoint is itself a pretrained source (encoder under "encoder.")
    enc = build_model(dict(ENC))
    assert load_pretrained_encoder(enc, out)["prefix"] == "encoder."


def test_modelnet40_real_files_fit_and_validate(shared_data, tmp_path):
    from spikelight.datamodules.pointcloud import ModelNet40DataModule

    root = shared_data / "modelnet40" / "modelnet40_normal_resampled"
    dm = ModelNet40DataModule(data_dir=str(root), num_points=128, with_train=True, batch_size=4,
                              sampling="first")
    task = PointClassify(encoder=dict(ENC), num_classes=40, optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=2)
    trainer.fit(task, datamodule=dm)
    assert task.class_names[0] == "airplane" and len(task.class_names) == 40
    cm = task.confusion_matrices["val"].matrix
    assert int(cm.sum()) == 4  # the 4 test files present (airplane, bed, bench, chair)
    assert cm.sum(1).nonzero().flatten().tolist() == [0, 2, 3, 8]  # airplane, bed, bench, chair rows
    assert 0.0 <= float(trainer.callback_metrics["val/top1"]) <= 1.0
