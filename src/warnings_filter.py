"""Known, harmless upstream warnings, filtered in one place.

:func:`filter_known_warnings` (called once by the ``spikelight`` command) hides the warnings listed in
:data:`KNOWN_WARNINGS`, each matched by its message, its category *and* the module that raises it, so the same
text from anywhere else (our code included) still shows, and every other warning shows as before. Each entry
says why it is harmless. When an upstream release fixes one, delete its entry; when a new one appears, add it
here with its reason, never a blanket ``ignore``.

Not filtered on purpose: Lightning's hints about a run's own settings ("The number of training batches (5) is
smaller than the logging interval", "Found N module(s) in eval mode at the start of training"), which can
point at a real mistake; deprecations raised from spikelight's own code (they are fixed at their cause).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

__all__ = ["KNOWN_WARNINGS", "KnownWarning", "filter_known_warnings"]


@dataclass(frozen=True)
class KnownWarning:
    """One filtered warning: ``message`` and ``module`` are regular expressions matched at the start of the
    warning's text and of the ``__name__`` of the module it is attributed to (``warnings.filterwarnings``);
    ``category`` matches its subclasses too (the upstream classes are named in comments: importing them would
    import the libraries, and some warnings fire while those are imported)."""

    message: str
    category: type[Warning]
    module: str
    reason: str


KNOWN_WARNINGS: tuple[KnownWarning, ...] = (
    KnownWarning(
        r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree\Z",
        "Lightning 2.6's copy of tree_flatten builds torch's LeafSpec, deprecated in torch 2.10; it still works "
        "and Lightning fixes it upstream (one line per fit/validate)."),
    KnownWarning(
        r"\s*(By default only one JsonargparseDeprecationWarning|``ArgumentParser\.add_instantiator`` was deprecated"
        r"|``instantiate_classes`` was deprecated|skip_none parameter was deprecated)",
        DeprecationWarning, r"lightning\.pytorch\.cli\Z",  # jsonargparse's JsonargparseDeprecationWarning
        "LightningCLI 2.6 calls jsonargparse APIs deprecated in 4.49 and removed only in 5.0 (setup.cfg pins "
        "jsonargparse < 5); nothing for a user to change."),
    KnownWarning(
        r"The (read_style_directory|update_nested_dict) function was deprecated in Matplotlib", DeprecationWarning,
        r"scienceplots(\.|\Z)",
        "scienceplots registers its plot styles through matplotlib helpers deprecated in 3.11 (removed in 3.13); "
        "the styles load, printed at every import of the plotting callbacks."),
    KnownWarning(
        r"The '\w+' does not have many workers which may be a bottleneck", UserWarning,  # PossibleUserWarning
        r"lightning\.pytorch\.trainer\.connectors\.data_connector\Z",
        "num_workers is chosen per config (0 for the in-memory synthetic sets, where workers only add start-up "
        "time; 8 in the real-data configs); Lightning's hint fires on every loader with fewer than 2 workers."),
)


def filter_known_warnings() -> tuple[KnownWarning, ...]:
    """Ignore the :data:`KNOWN_WARNINGS` (idempotent: calling it again adds no duplicate filter). Filters are
    put in front of the existing ones, so they also hold under ``-W default`` or pytest's "show everything".

    Imports nothing: call it before ``lightning`` is imported (``import lightning`` imports torchmetrics,
    which imports scienceplots, whose deprecations fire at that moment)."""
    for known in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=known.message, category=known.category, module=known.module)
    return KNOWN_WARNINGS
