"""Plain-line progress (stdout that is a file), the prediction writer, and the known-warnings filter."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader

from spikelight.callbacks.predictions import PredictionWriter, collate_predictions
from spikelight.callbacks.progress import PlainProgressBar, default_progress_bar
from spikelight.datamodules.synthetic import ToyDataModule
from spikelight.tasks.toy import ToyClassifier

pytestmark = pytest.mark.usefixtures("one_thread")

LINE = re.compile(r"^(train|val|test|predict)( \S+=\S+)+$")


def _fields(line: str) -> dict[str, str]:
    return dict(tok.split("=", 1) for tok in line.split()[1:])


def _trainer(tmp_path, callbacks, **kw) -> Trainer:
    kw.setdefault("max_epochs", 2)
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, callbacks=callbacks,
                   default_root_dir=str(tmp_path), enable_model_summary=False, **kw)


# ------------------------------------------------------------------------------------------- progress
def test_plain_progress_bar_prints_parseable_lines_without_carriage_returns(tmp_path, capsys):
    dm = ToyDataModule(train_size=96, val_size=40, batch_size=16)  # 6 training batches, 3 validation batches
    model = ToyClassifier(network="toy_mlp")
    trainer = _trainer(tmp_path, [PlainProgressBar(every_n_steps=4)], num_sanity_val_steps=2)
    trainer.fit(model, datamodule=dm)
    final_val_top1 = float(trainer.callback_metrics["val/top1"])
    trainer.test(model, datamodule=dm, verbose=False)
    out = capsys.readouterr().out
    assert "\r" not in out and "\x1b" not in out  # no redraws, no terminal escape codes
    ours = [ln for ln in out.splitlines() if LINE.match(ln)]
    train = [_fields(ln) for ln in ours if ln.startswith("train ")]
    val = [_fields(ln) for ln in ours if ln.startswith("val ")]
    # every 4th batch and the epoch's last one: batches 4 and 6 of each epoch; sanity check prints nothing
    assert [(f["epoch"], f["batch"], f["step"]) for f in train] == [
        ("1/2", "4/6", "4"), ("1/2", "6/6", "6"), ("2/2", "4/6", "10"), ("2/2", "6/6", "12")]
    for f in train:
        assert re.fullmatch(r"\d+:\d\d:\d\d", f["elapsed"])
        assert float(f["it/s"]) > 0
        assert 0 < float(f["train/loss"]) < 10
    assert [(f["epoch"], f["step"], f["batches"]) for f in val] == [("1/2", "6", "3"), ("2/2", "12", "3")]
    for f in val:
        assert 0 <= float(f["val/top1"]) <= 1 and float(f["val/loss"]) > 0
    assert float(val[-1]["val/top1"]) == pytest.approx(final_val_top1, abs=1e-3)
    test = [_fields(ln) for ln in ours if ln.startswith("test ")]
    assert len(test) == 1 and test[0]["batches"] == "3" and 0 <= float(test[0]["test/top1"]) <= 1


def test_plain_progress_default_interval_and_rank_zero_only():
    bar = PlainProgressBar()
    assert bar.interval(1000) == 50 and bar.interval(30) == 3 and bar.interval(5) == 1 and bar.interval(-1) == 50
    assert PlainProgressBar(every_n_steps=7).interval(1000) == 7
    with pytest.raises(ValueError, match="every_n_steps"):
        PlainProgressBar(every_n_steps=0)
    stream = io.StringIO()
    other_rank = PlainProgressBar(stream=stream)
    other_rank.setup(SimpleNamespace(is_global_zero=False), None, "fit")  # Lightning's ProgressBar.setup
    other_rank.print("train epoch=1")
    rank0 = PlainProgressBar(stream=stream)
    rank0.setup(SimpleNamespace(is_global_zero=True), None, "fit")
    rank0.print("train epoch=2")
    assert stream.getvalue() == "train epoch=2\n"


def test_default_progress_bar_plain_only_when_stdout_is_not_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(default_progress_bar(io.StringIO()), PlainProgressBar)
    assert default_progress_bar(Tty()) is None
    assert isinstance(default_progress_bar(object()), PlainProgressBar)  # no isatty at all: a file-like log


# ------------------------------------------------------------------------------------------- predictions
def test_prediction_writer_toy_predict(tmp_path):
    dm = ToyDataModule(train_size=32, val_size=40, batch_size=16)  # predict = the 40 validation samples
    model = ToyClassifier(network="toy_mlp")
    writer = PredictionWriter()
    trainer = _trainer(tmp_path, [writer], enable_progress_bar=False)
    returned = trainer.predict(model, datamodule=dm)
    folder = tmp_path / "predictions"  # default: <default_root_dir>/predictions
    assert sorted(p.name for p in folder.iterdir()) == ["predictions.jsonl", "predictions.pt"]
    data = torch.load(folder / "predictions.pt", weights_only=True)
    assert set(data) == {"predictions", "index"}
    assert torch.equal(data["predictions"], torch.cat(returned))
    assert data["index"].tolist() == list(range(40))
    dm.setup("predict")
    with torch.no_grad():
        expected = model.eval()(dm.val_set.x).argmax(-1)
    assert torch.equal(data["predictions"], expected)
    rows = [json.loads(ln) for ln in (folder / "predictions.jsonl").read_text().splitlines()]
    assert rows == [{"index": i, "predictions": int(p)} for i, p in enumerate(expected)]
    assert writer.written == [folder / "predictions.pt", folder / "predictions.jsonl"]


class _ZeroShotLike(LightningModule):
    """predict_step returns what SVLPretrain's does: logits, pred, class names, label (None without labels)."""

    names = ("chair", "table", "flower pot")

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        logits = self.proj(batch)
        pred = logits.argmax(-1)
        return {"logits": logits, "pred": pred, "names": [self.names[int(i)] for i in pred],
                "label": None if dataloader_idx == 0 else pred.clone()}


def test_prediction_writer_dict_outputs_two_dataloaders(tmp_path):
    torch.manual_seed(0)
    x0, x1 = torch.randn(10, 4), torch.randn(7, 4)
    model = _ZeroShotLike()
    out = tmp_path / "out"
    trainer = _trainer(tmp_path, [PredictionWriter(str(out))], enable_progress_bar=False)
    trainer.predict(model, dataloaders=[DataLoader(x0, batch_size=4), DataLoader(x1, batch_size=3)],
                    return_predictions=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "predictions-1.jsonl", "predictions-1.pt", "predictions.jsonl", "predictions.pt"]
    for name, x in (("predictions", x0), ("predictions-1", x1)):
        data = torch.load(out / f"{name}.pt", weights_only=True)
        with torch.no_grad():
            logits = model.proj(x)
        torch.testing.assert_close(data["logits"], logits)
        assert data["pred"].tolist() == logits.argmax(-1).tolist()
        assert data["names"] == [model.names[i] for i in logits.argmax(-1).tolist()]
        assert data["index"].tolist() == list(range(len(x)))
        rows = [json.loads(ln) for ln in (out / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == len(x)
        assert [r["names"] for r in rows] == data["names"] and "logits" not in rows[0]
    assert torch.load(out / "predictions.pt", weights_only=True)["label"] is None
    assert torch.load(out / "predictions-1.pt", weights_only=True)["label"].tolist() == \
        torch.load(out / "predictions-1.pt", weights_only=True)["pred"].tolist()


def test_collate_predictions_orders_by_index_and_drops_repeats():
    # two "ranks" interleaved (0, 2, 4 | 1, 3, 5) with a padded repeat of sample 0 at the end
    batches = [{"pred": torch.tensor([0, 2]), "name": ["a0", "a2"]}, {"pred": torch.tensor([4]), "name": ["a4"]},
               {"pred": torch.tensor([1, 3]), "name": ["a1", "a3"]}, {"pred": torch.tensor([5, 0]), "name": ["a5", "a0"]}]
    data = collate_predictions(batches, [[0, 2], [4], [1, 3], [5, 0]])
    assert data["index"].tolist() == [0, 1, 2, 3, 4, 5]
    assert data["pred"].tolist() == [0, 1, 2, 3, 4, 5]
    assert data["name"] == ["a0", "a1", "a2", "a3", "a4", "a5"]
    # tensors and tuples without indices: concatenated in order, not per-sample values kept per batch
    plain = collate_predictions([torch.ones(2, 3), torch.zeros(1, 3)])
    assert plain["predictions"].shape == (3, 3) and "index" not in plain
    cols = collate_predictions([(torch.ones(2), torch.zeros(2, 5)), (torch.ones(1), torch.zeros(1, 5))], [[0, 1], [2]])
    assert [c.shape for c in cols["predictions"]] == [(3,), (3, 5)]
    scalars = collate_predictions([{"loss": torch.tensor(1.0), "p": torch.ones(2)}, {"loss": torch.tensor(2.0),
                                                                                      "p": torch.ones(2)}])
    assert [float(v) for v in scalars["loss"]] == [1.0, 2.0] and scalars["p"].shape == (4,)


# ------------------------------------------------------------------------------------------- warnings
_EMIT_KNOWN = r"""
import importlib, json, warnings
warnings.simplefilter("always")  # as under pytest or -W default: everything shows
shown = []
warnings.showwarning = lambda msg, cat, *a, **k: shown.append(f"{cat.__name__}: {str(msg).strip()[:60]}")
import torch
from unittest import mock
from torch.utils.data import DataLoader
import scienceplots
import jsonargparse._deprecated as jd
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.trainer.connectors import data_connector
from lightning.pytorch.utilities._pytree import _tree_flatten
from spikelight.warnings_filter import filter_known_warnings

def emit():
    shown.clear()
    importlib.reload(scienceplots)  # matplotlib deprecations from its style registration
    _tree_flatten(torch.zeros(1))  # torch's LeafSpec deprecation through Lightning's copy
    with mock.patch.object(data_connector, "suggested_max_num_workers", return_value=8):  # a many-core node
        data_connector._worker_check(mock.Mock(num_devices=1), DataLoader(range(4)), "train_dataloader")
    jd.shown_deprecation_warnings.clear()  # jsonargparse shows each deprecation once per process
    LightningCLI(BoringModel, args=[], run=False, save_config_callback=None, trainer_defaults={"logger": False})
    warnings.warn("something new", UserWarning)  # unknown: must still show
    warnings.warn_explicit("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, "ours.py", 1,
                           module="spikelight.somewhere")  # the same text from elsewhere: still shows
    return list(shown)

before = emit()
filter_known_warnings()
n_filters = len(warnings.filters)
filter_known_warnings()  # idempotent
print("RESULT" + json.dumps({"before": before, "after": emit(), "added": len(warnings.filters) - n_filters}))
"""


def test_filter_known_warnings_hides_only_the_known_ones(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _EMIT_KNOWN], capture_output=True, text=True, timeout=240,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result["added"] == 0  # a second call adds no duplicate filters
    unknown = ["UserWarning: something new", "FutureWarning: `isinstance(treespec, LeafSpec)` is deprecated"]
    known = {"MatplotlibDeprecationWarning: The read_style_directory function",
             "MatplotlibDeprecationWarning: The update_nested_dict function",
             "FutureWarning: `isinstance(treespec, LeafSpec)` is deprecat",
             "PossibleUserWarning: The 'train_dataloader' does not have many",
             "JsonargparseDeprecationWarning: ``ArgumentParser.add_instantiator``",
             "JsonargparseDeprecationWarning: ``instantiate_classes`` was deprecat",
             "JsonargparseDeprecationWarning: By default only one Jsonargpars"}

    def hits(shown: list[str]) -> set[str]:
        return {k for k in known if any(s.startswith(k) for s in shown)}

    # without the filter every known warning is really emitted by these calls
    assert hits(result["before"]) == known, result["before"]
    after = result["after"]
    for u in unknown:
        assert any(s.startswith(u[:60]) for s in after), (u, after)
    assert sum(s.startswith("FutureWarning: `isinstance(treespec") for s in after) == 1  # only the one from "ours"
    assert hits(after) <= {"FutureWarning: `isinstance(treespec, LeafSpec)` is deprecat"}, after
