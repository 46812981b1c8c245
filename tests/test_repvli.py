"""Rep-VLI: export the trained SVL model as encoder + K x C head; same predictions, no text tower."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from spikelight.datamodules.pointcloud import Synthetic3DDataModule
from spikelight.deploy import RepVLIClassifier, load_deploy
from spikelight.tasks.svl_pretrain import SVLPretrain

CATS = ["box", "sphere", "cone", "torus", "chair", "table", "mug", "bench"]
HELDOUT = ["mug", "bench"]
TEMPLATES = ["a point cloud model of {}.", "a 3D model of the {}."]
ENC = {"embed_dim": 32, "input_transform": False, "feature_transform": False}
SPEC = {"name": "spike_pointnet_test", **ENC}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A briefly trained tiny SVL model, its datamodule, a validation batch and an export folder."""
    dm = Synthetic3DDataModule(
        num_points=128, image_size=32, train_per_class=3, val_per_class=2, categories=CATS,
        heldout_categories=HELDOUT, batch_size=12, cache_dir=str(tmp_path_factory.mktemp("syn3d")),
        progress=False, prompt_templates=TEMPLATES,
    )  # fmt: skip
    dm.setup("fit")
    torch.manual_seed(0)
    task = SVLPretrain(encoder=SPEC, clip_model="spikelight-tiny-clip", text_model=None)
    opt = torch.optim.AdamW(task.parameters_to_optimize(), lr=3e-3)
    for batch in dm.train_dataloader():  # a few steps so BN statistics and projections are not at init
        img, txt = task.teacher_features(batch)
        loss = task.mta(task(batch["points"]), *task.align(img, txt))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    task.eval()
    val = dm.val_dataloader()
    points = torch.cat([b["points"] for b in val[0]])
    out = tmp_path_factory.mktemp("deploy")
    path = task.export_deploy(out, datamodule=dm)
    return {"task": task, "dm": dm, "points": points, "path": path}


def _full_predict(task: SVLPretrain, points: torch.Tensor, names: list[str]) -> torch.Tensor:
    """The full zero-shot model through the task's zero-shot classifier (what validation scores)."""
    with torch.no_grad():
        return task.zero_shot.logits(task(points), task.zero_shot.weights(names, TEMPLATES))


def _full_uncached(task: SVLPretrain, points: torch.Tensor, names: list[str]) -> torch.Tensor:
    """The full zero-shot model written out independently: text tower on every prompt, average,
    projection, normalisation, scale."""
    with torch.no_grad():
        f = task.towers.encode_text([t.format(n) for n in names for t in TEMPLATES])
        f = torch.nn.functional.normalize(f.view(len(names), len(TEMPLATES), -1), dim=-1).mean(1)
        w = torch.nn.functional.normalize(f @ task.align.proj_text.weight.t(), dim=-1)
        x = torch.nn.functional.normalize(task(points), dim=-1)
        return task.align.logit_scale.exp() * x @ w.t()


def _latency(fn, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[reps // 2]  # median: robust to a busy machine


def test_export_folder_layout(trained):
    path = trained["path"]
    cfg = json.loads((path / "config.json").read_text())
    names = json.loads((path / "class_names.json").read_text())
    assert names == trained["dm"].train_class_names  # default: the first val set
    assert cfg["format"] == "spikelight-repvli"
    assert cfg["encoder"] == {"name": "spike_pointnet_test", "kwargs": ENC}
    assert (cfg["num_classes"], cfg["embed_dim"], cfg["timesteps"]) == (len(names), 32, 1)
    assert cfg["templates"] == TEMPLATES
    from safetensors.torch import load_file

    state = load_file(str(path / "model.safetensors"))
    assert state["head.weight"].shape == (len(names), 32)
    assert not any(k.startswith(("mta", "align", "towers")) for k in state)
    # the head is the logit scale times the normalised projected prompt features
    task = trained["task"]
    w = task.zero_shot.weights(names, TEMPLATES).detach()
    torch.testing.assert_close(state["head.weight"], task.align.logit_scale.exp().detach() * w)
    torch.testing.assert_close(
        state["head.weight"].norm(dim=-1), torch.full((len(names),), cfg["logit_scale"])
    )


def test_deploy_predictions_equal_full_model(trained):
    task, points, path = trained["task"], trained["points"], trained["path"]
    names = trained["dm"].train_class_names
    deploy = load_deploy(path)
    assert isinstance(deploy, RepVLIClassifier) and not deploy.training
    full_logits = _full_predict(task, points, names)
    idx, pred_names = deploy.predict(points)
    assert torch.equal(idx, full_logits.argmax(-1))
    assert pred_names == [names[i] for i in full_logits.argmax(-1).tolist()]
    # logits differ only by the per-sample norm of the embedding; normalising restores them exactly
    deploy.normalize_input = True
    with torch.no_grad():
        torch.testing.assert_close(deploy(points), full_logits, rtol=1e-4, atol=1e-4)
    deploy.normalize_input = False

    towers = task.towers
    n_deploy = deploy.num_parameters()
    n_full = sum(p.numel() for p in task.encoder.parameters()) + sum(p.numel() for p in task.align.parameters())
    n_full += sum(p.numel() for p in towers.clip_text.parameters())
    assert n_deploy == sum(p.numel() for p in task.encoder.parameters()) + len(names) * 32
    assert n_deploy < n_full
    t_deploy = _latency(lambda: deploy.predict(points))
    torch.testing.assert_close(_full_uncached(task, points, names), full_logits, rtol=1e-4, atol=1e-4)
    t_full = _latency(lambda: _full_uncached(task, points, names))  # text tower runs per query batch
    print(f"\nRep-VLI deploy: {n_deploy:,} params, {1e3 * t_deploy:.1f} ms / batch of {len(points)}; "
          f"full zero-shot model (encoder + text tower + projection): {n_full:,} params, "
          f"{1e3 * t_full:.1f} ms / batch")  # fmt: skip


def test_swap_in_new_classes(trained):
    task, path, dm = trained["task"], trained["path"], trained["dm"]
    deploy = load_deploy(path)
    new = dm.heldout_class_names + ["airplane"]
    deploy.swap_classes_from(task.zero_shot, new, TEMPLATES)
    assert deploy.num_classes == 3 and deploy.class_names == new
    points = torch.cat([b["points"] for b in dm.val_dataloader()[1]])
    idx, names = deploy.predict(points)
    assert torch.equal(idx, _full_predict(task, points, new).argmax(-1))
    assert set(names) <= set(new)
    with pytest.raises(ValueError, match="class names"):
        deploy.swap_classes(torch.zeros(2, 32), ["a", "b", "c"])
    with pytest.raises(ValueError, match="columns"):
        deploy.swap_classes(torch.zeros(2, 31), ["a", "b"])


def test_export_with_explicit_classes(trained, tmp_path):
    task = trained["task"]
    path = task.export_deploy(tmp_path / "d2", class_names=["mug", "bench"], datamodule=trained["dm"])
    deploy = load_deploy(path)
    assert deploy.class_names == ["mug", "bench"]
    torch.testing.assert_close(deploy.head.weight, task.zero_shot.deploy_weights(["mug", "bench"], TEMPLATES))


def test_deploy_loader_imports_no_text_tower(trained):
    code = (
        "import sys, torch\n"
        "from spikelight.deploy import load_deploy\n"
        f"m = load_deploy({str(trained['path'])!r})\n"
        "idx, names = m.predict(torch.rand(2, 128, 6) * 2 - 1)\n"
        "assert len(names) == 2 and 'safetensors' in sys.modules\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('open_clip', 'transformers'))\n"
        "print('IMPORTED', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "IMPORTED []" in proc.stdout


def test_load_deploy_errors(tmp_path, trained):
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        load_deploy(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("model.safetensors", "class_names.json"):
        (bad / f).write_bytes((trained["path"] / f).read_bytes())
    (bad / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="format"):
        load_deploy(bad)


def test_cli_fit_then_export_with_class_list(tmp_path, monkeypatch):
    """`spikelight fit` (shrunk by the config's smoke overrides) then `spikelight export --classes ...`."""
    from pathlib import Path

    import yaml

    from spikelight.cli import SpikelightCLI

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "experiments" / "svl" / "synthetic.yaml"
    smoke = yaml.safe_load(config.read_text())["smoke"]["overrides"]
    shrink = []
    for k, v in smoke.items():
        shrink += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
    base = ["--config", str(config), *shrink, "--run_root", str(tmp_path / "runs"),
            "--data.init_args.cache_dir", str(tmp_path / "syn3d"), "--data.init_args.progress", "false"]  # fmt: skip
    SpikelightCLI(args=["fit", *base, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
                        "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"])  # fmt: skip
    run = tmp_path / "runs" / "svl_synthetic"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    out = tmp_path / "deploy"
    SpikelightCLI(
        args=["export", *base, "--ckpt_path", "last", "--classes", "mug, sofa,airplane", "--out", str(out)]
    )
    deploy = load_deploy(out)
    assert deploy.class_names == ["mug", "sofa", "airplane"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["teacher"]["text_model"] == "minilm" and cfg["encoder"]["name"] == "spike_pointnet_test"
    idx, names = deploy.predict(torch.rand(3, 128, 6) * 2 - 1)
    assert idx.shape == (3,) and set(names) <= {"mug", "sofa", "airplane"}
    # --templates reaches the shared zero-shot classifier: one template gives other rows than the default
    out1 = tmp_path / "deploy1"
    SpikelightCLI(args=["export", *base, "--ckpt_path", "last", "--classes", "mug,sofa", "--templates",
                        "a {}.|an object: {}.", "--out", str(out1)])  # fmt: skip
    cfg1 = json.loads((out1 / "config.json").read_text())
    assert cfg1["templates"] == ["a {}.", "an object: {}."] and cfg1["templates"] != cfg["templates"]
