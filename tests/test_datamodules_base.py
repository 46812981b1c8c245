"""The shared DataModule base (spikelight.datamodules.base) and the package's public names."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

import spikelight.datamodules as dms
from spikelight.datamodules import EvalSet, SpikelightDataModule, collate_dict


class _Range(Dataset):
    def __init__(self, n: int, names=("a", "b")) -> None:
        self.n, self.class_names = n, list(names)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"x": torch.tensor([float(i)]), "label": i % 2, "text": f"t{i}"}


class _DM(SpikelightDataModule):
    collate_fn = staticmethod(collate_dict)
    class_names = ["a", "b"]

    def __init__(self, sets: bool = False, **kw) -> None:
        super().__init__(**kw)
        self.sets, self.setups = sets, []

    def setup(self, stage=None) -> None:
        self.setups.append(stage)
        self.train_set = _Range(10)
        self.val_set = {"one": _Range(3), "two": _Range(5, ("c", "d", "e"))} if self.sets else _Range(4)


class _World:
    world_size, accumulate_grad_batches = 2, 2


def test_every_datamodule_is_importable_from_the_package():
    names = [n for n in dms.__all__ if n.endswith("DataModule")]
    assert {"ToyDataModule", "ModelNet40DataModule", "ScanObjectNNDataModule", "ShapeNet55TripletDataModule",
            "OpenShapeTripletDataModule", "Synthetic3DDataModule", "ImageNetDataModule", "SyntheticImageDataModule",
            "DVSGestureDataModule", "SyntheticDVSDataModule"} <= set(names)
    for n in names:
        cls = getattr(dms, n)
        assert issubclass(cls, SpikelightDataModule), n


def test_loaders_setup_lazily_and_collate_dicts():
    dm = _DM(batch_size=4, drop_last=True)
    batches = list(dm.train_dataloader())
    assert dm.setups == ["fit"]
    assert [len(b["label"]) for b in batches] == [4, 4]  # drop_last on training
    assert batches[0]["label"].dtype == torch.int64 and isinstance(batches[0]["text"], list)
    assert sum(len(b["label"]) for b in dm.val_dataloader()) == 4  # evaluation keeps every sample
    assert [e.name for e in dm.eval_sets()] == ["val"] and dm.eval_sets()[0].class_names == ("a", "b")
    small = _DM(batch_size=16, drop_last=True)  # a set smaller than a batch still yields its batch
    assert [len(b["label"]) for b in small.train_dataloader()] == [10]


def test_named_eval_sets_align_with_val_loaders():
    dm = _DM(sets=True, batch_size=2)
    loaders = dm.val_dataloader()
    sets = dm.eval_sets()
    assert [len(ld.dataset) for ld in loaders] == [3, 5] and [s.name for s in sets] == ["one", "two"]
    assert all(isinstance(s, EvalSet) for s in sets) and sets[1].num_classes == 3
    assert [len(ld.dataset) for ld in dm.test_dataloader()] == [3, 5]  # test defaults to the eval sets


def test_global_batch_is_split_over_ranks_and_accumulation():
    dm = _DM(batch_size=None, global_batch_size=8)
    assert dm.resolve_batch_size() == 8  # no trainer: one rank
    dm.trainer = _World()
    assert dm.resolve_batch_size() == 2 and dm.train_dataloader().batch_size == 2
    dm = _DM(batch_size=None, global_batch_size=6)
    dm.trainer = _World()
    with pytest.raises(ValueError, match="not divisible"):
        dm.resolve_batch_size()
    with pytest.raises(ValueError, match="global_batch_size"):
        _DM(batch_size=None)
