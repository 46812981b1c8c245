"""The shared DataModule base (spikelight.datamodules.base), the package's public names, and bad data files:
one line naming the file, read in the main process or in a DataLoader worker, and no loader that unpickles."""

from __future__ import annotations

import ast
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._utils import ExceptionWrapper
from torch.utils.data import Dataset

import spikelight.datamodules as dms
from spikelight.datamodules import DataError, EvalSet, SpikelightDataModule, collate_dict

REPO = Path(__file__).resolve().parents[1]


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


# ----------------------------------------------------------------------------------------------
# bad data files: one line naming the file, in the main process and in DataLoader workers
# ----------------------------------------------------------------------------------------------
def _worker_reraise(exc: BaseException) -> BaseException:
    """What the main process gets when ``exc`` is raised in DataLoader worker 3 (PyTorch's own re-raise)."""
    try:
        raise exc
    except BaseException:  # noqa: BLE001
        wrapper = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 3")
    with pytest.raises(BaseException) as ei:
        wrapper.reraise()
    return ei.value


def test_data_error_is_one_line_and_survives_worker_reraise_and_pickle():
    from spikelight.datamodules.images import BadImageError

    e = DataError("/d/x: 1.npy", "cannot parse\n  line 2:   bad value")
    assert str(e) == "/d/x: 1.npy: cannot parse line 2: bad value" and isinstance(e, ValueError)
    for cls in (DataError, BadImageError):
        try:
            raise cls("/data/a b.ply", "unreadable PLY file (ValueError: early end-of-file)")
        except DataError as cause:
            back = _worker_reraise(cause)
        assert type(back) is cls and back.path == "/data/a b.ply"
        assert str(back) == "/data/a b.ply: unreadable PLY file (ValueError: early end-of-file) (in DataLoader worker process 3)"
    err = DataError("/f.h5", "truncated h5 file")
    err.__cause__ = OSError("h5 boom")  # a cause from C code: no traceback, the text starts "Original OSError"
    assert str(_worker_reraise(err)) == "/f.h5: truncated h5 file (in DataLoader worker process 3)"
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is DataError and (again.path, again.problem) == (e.path, e.problem)
    assert str(DataError("no file here")) == "no file here" and DataError("no file here").path is None


def _first_batch_error(loader) -> BaseException:
    try:
        for _ in loader:
            pass
    except ValueError as e:  # without its traceback, the loader and its workers end here, not at interpreter exit
        return e.with_traceback(None)
    raise AssertionError("the loader read every sample without an error")


def _assert_one_line(err: BaseException, path: Path, problem: str, num_workers: int) -> None:
    """The error the CLI prints (it catches ValueError): a DataError, one line, the file and the problem."""
    assert isinstance(err, DataError), f"{type(err).__name__}: {err}"
    msg = str(err)
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert err.path == str(path) and msg.startswith(f"{path}: "), msg
    assert problem in err.problem, msg
    assert ("DataLoader worker process" in msg) == (num_workers > 0), msg


def _modelnet(root: Path, bad: bytes) -> tuple[dms.SpikelightDataModule, Path]:
    data = root / "modelnet40_normal_resampled"
    (data / "chair").mkdir(parents=True)
    (data / "modelnet40_shape_names.txt").write_text("chair\n")
    (data / "modelnet40_test.txt").write_text("chair_0001\nchair_0002\n")
    np.savetxt(data / "chair" / "chair_0001.txt", np.random.default_rng(0).uniform(-1, 1, (32, 6)), delimiter=",")
    (data / "chair" / "chair_0002.txt").write_bytes(bad)
    return data, data / "chair" / "chair_0002.txt"


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_point_cloud_file_names_the_file(tmp_path, num_workers):
    from spikelight.datamodules.pointcloud import ModelNet40DataModule

    data, bad = _modelnet(tmp_path, bytes(range(256)) * 8)  # random bytes: not a text file
    dm = ModelNet40DataModule(data_dir=data, num_points=16, batch_size=2, num_workers=num_workers)
    _assert_one_line(_first_batch_error(dm.val_dataloader()[0]), bad, "not a text file", num_workers)
    bad.write_text("0.1,0.2,0.3\n0.1,abc,0.3\n")  # a line that does not parse: numpy's message, on one line
    dm = ModelNet40DataModule(data_dir=data, num_points=16, batch_size=2, num_workers=num_workers)
    _assert_one_line(_first_batch_error(dm.val_dataloader()[0]), bad, "cannot parse", num_workers)


def _gesture(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for user, label in (("user24_natural", 2), ("user24_natural", 5)):
        d = root / "DVSGesture" / "ibmGestureTest" / user
        d.mkdir(parents=True, exist_ok=True)
        n = 64
        arr = np.stack([rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n),
                        np.sort(rng.integers(0, 6000, n))], axis=1)
        np.save(d / f"{label}.npy", arr)
    return root / "DVSGesture" / "ibmGestureTest" / "user24_natural" / "5.npy"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_truncated_event_file_names_the_file(tmp_path, num_workers):
    from spikelight.datamodules.events import DVSGestureDataModule

    bad = _gesture(tmp_path)
    dm = DVSGestureDataModule(data_dir=str(tmp_path), timesteps=2, batch_size=2, num_workers=num_workers)
    dm.setup("validate")  # the headers are fine here; the file is cut while the run goes on (a sync, a copy)
    _truncate(bad)
    _assert_one_line(_first_batch_error(dm.val_dataloader()), bad, "cannot be read as a .npy array", num_workers)
    # truncated before the run: refused in setup, in the main process, with the same kind of line
    with pytest.raises(DataError) as ei:
        DVSGestureDataModule(data_dir=str(tmp_path), timesteps=2).setup("validate")
    _assert_one_line(ei.value, bad, "cannot be read as a .npy array", 0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_non_image_jpeg_names_the_file(tmp_path, num_workers):
    from PIL import Image

    from spikelight.datamodules.images import ImageNetDataModule

    for split in ("train", "val"):
        d = tmp_path / split / "n01440764"
        d.mkdir(parents=True)
        Image.new("RGB", (40, 40), (200, 30, 30)).save(d / "a.JPEG")
    bad = tmp_path / "val" / "n01440764" / "b.JPEG"
    bad.write_text("<html>403 Forbidden</html>\n")  # what a failed download leaves behind
    dm = ImageNetDataModule(data_dir=str(tmp_path), batch_size=2, global_batch_size=None, num_workers=num_workers,
                            img_size=32, eval_resize=36, pin_memory=False)
    dm.setup("validate")
    _assert_one_line(_first_batch_error(dm.val_dataloader()), bad, "UnidentifiedImageError", num_workers)


@pytest.mark.slow
def test_cli_ends_a_bad_file_in_a_worker_with_one_line(tmp_path, cli):
    """``spikelight validate`` with 2 workers: a file whose header is fine but whose content is not (found
    only when a worker reads it) ends in one ``spikelight: error: DataError: <file>: ...`` line."""
    bad = _gesture(tmp_path / "data")
    arr = np.load(bad)
    arr[3, 0] = 500  # x outside the 128-pixel sensor
    np.save(bad, arr)
    proc = cli(["validate", "--config", str(REPO / "experiments/trevsnn/dvs_gesture.yaml"),
                "--data.init_args.data_dir", str(tmp_path / "data"), "--data.init_args.num_workers", "2",
                "--data.init_args.batch_size", "2", "--model.init_args.network.name", "trevsnn_test",
                "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--run_root", str(tmp_path / "runs")],
               cwd=tmp_path, env={"WANDB_MODE": "disabled"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("spikelight: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith(f"spikelight: error: DataError: {bad}: ") and "outside the sensor" in lines[0], lines
    assert "DataLoader worker process" in lines[0]


def test_no_loader_unpickles():
    """No module of spikelight.datamodules imports pickle / joblib / dill, calls torch.load, or calls np.load
    without ``allow_pickle=False``."""
    problems = []
    for f in sorted((REPO / "datamodules").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            where = f"{f.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                problems += [f"{where} imports {m}" for m in mods
                             if m.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "cloudpickle")]
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                owner = ast.unparse(node.func.value)
                if owner == "torch":
                    problems.append(f"{where} calls torch.load")
                if owner in ("np", "numpy"):
                    kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                    if kw.get("allow_pickle") != "False":
                        problems.append(f"{where} calls np.load without allow_pickle=False")
    assert not problems, problems
