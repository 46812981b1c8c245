"""``SpikeEnergy``: firing rates, synaptic operations and estimated energy during validation/test.

Measures the first ``num_batches`` batches of dataloader 0 of each validation (and test) epoch
with an :class:`~spikelight.profiling.energy.EnergyMeter` (entered in ``on_*_batch_start``, left in
``on_*_batch_end``), then at epoch end:

* logs ``energy/mj_per_sample``, ``energy/ann_mj_per_sample``, ``energy/ac_ops_per_sample``,
  ``energy/mac_flops_per_sample``, ``energy/mean_firing_rate`` (``sync_dist=True``: averaged
  over ranks);
* on global rank 0 writes ``<default_root_dir>/energy.json`` (the full report plus ``stage`` and
  ``epoch``), ``energy_layers.csv`` (per-layer table) and, with ``plot=True``,
  ``firing_rates.png`` (bar chart of per-neuron-layer firing rates); with a W&B logger it also logs
  the table, the PNG and an interactive bar chart (:mod:`spikelight.callbacks.firing_rates`);
* keeps the report on ``self.last_report`` (print it with
  :func:`spikelight.profiling.energy.format_report`).

Skipped while Lightning runs its sanity check. Example (YAML)::

    trainer:
      callbacks:
        - class_path: spikelight.callbacks.SpikeEnergy
          init_args: {module: encoder, num_batches: 4}
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl

from spikelight.callbacks.firing_rates import log_to_wandb, plot_firing_rates
from spikelight.datamodules.base import batch_size_of
from spikelight.loggers import is_wandb
from spikelight.profiling.energy import E_AC_PJ, E_MAC_PJ, EnergyMeter, EnergyReport

__all__ = ["SpikeEnergy"]

_STAGES = ("validate", "test")


class SpikeEnergy(pl.Callback):
    """Estimate spike energy on a few validation/test batches.

    Args:
        module: dotted name of the submodule of the LightningModule to measure (e.g.
            ``"encoder"``; frozen CLIP towers elsewhere in the module are then excluded);
            ``None``: the whole LightningModule.
        num_batches: batches of dataloader 0 measured per epoch (the first ones).
        stage: ``"validate"``, ``"test"`` or both (default).
        e_mac_pj / e_ac_pj: energy per MAC / per accumulate, pJ.
        mac_layers: module names (relative to the LightningModule, e.g. ``"encoder.stem.0"``;
            ``fnmatch`` patterns and subtree prefixes allowed) forced to count as MAC.
        every_n_epochs: during ``fit``, measure when ``(epoch + 1) % every_n_epochs == 0``.
            ``validate`` / ``test`` runs always measure.
        plot: write/log the firing-rate bar chart.
        spike_max: see :class:`~spikelight.profiling.energy.EnergyMeter` (``"auto"`` by default).
        batch_size_fn: samples in a batch; default :func:`spikelight.datamodules.base.batch_size_of`.
    """

    def __init__(
        self,
        *,
        module: str | None = None,
        num_batches: int = 4,
        stage: str | Sequence[str] = _STAGES,
        e_mac_pj: float = E_MAC_PJ,
        e_ac_pj: float = E_AC_PJ,
        mac_layers: Sequence[str] = (),
        every_n_epochs: int = 1,
        plot: bool = True,
        spike_max: float | str | None = "auto",
        batch_size_fn: Callable[[Any], int] | None = None,
    ) -> None:
        super().__init__()
        stages = (stage,) if isinstance(stage, str) else tuple(stage)
        bad = [s for s in stages if s not in _STAGES]
        if bad:
            raise ValueError(f"SpikeEnergy stage must be among {_STAGES}, got {bad}")
        if num_batches < 1:
            raise ValueError(f"SpikeEnergy num_batches must be >= 1, got {num_batches}")
        if every_n_epochs < 1:
            raise ValueError(f"SpikeEnergy every_n_epochs must be >= 1, got {every_n_epochs}")
        self.module = module
        self.num_batches = int(num_batches)
        self.stages = stages
        self.e_mac_pj, self.e_ac_pj = float(e_mac_pj), float(e_ac_pj)
        self.mac_layers = list(mac_layers)
        self.every_n_epochs = int(every_n_epochs)
        self.plot = bool(plot)
        self.spike_max = spike_max
        self.batch_size_fn = batch_size_fn or batch_size_of
        self.meter: EnergyMeter | None = None
        self.last_report: EnergyReport | None = None

    # -- helpers ------------------------------------------------------------------------------

    def _wanted(self, trainer: pl.Trainer, stage: str) -> bool:
        if stage not in self.stages or trainer.sanity_checking:
            return False
        if stage == "validate" and trainer.state.fn == "fit":
            return (trainer.current_epoch + 1) % self.every_n_epochs == 0
        return True

    def _epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._discard()
        if self._wanted(trainer, stage):
            self.meter = EnergyMeter(
                pl_module,
                module=self.module,
                e_mac_pj=self.e_mac_pj,
                e_ac_pj=self.e_ac_pj,
                mac_layers=self.mac_layers,
                spike_max=self.spike_max,
            )

    def _batch_start(self, batch_idx: int, dataloader_idx: int) -> None:
        if self.meter is not None and dataloader_idx == 0 and batch_idx < self.num_batches:
            self.meter.start()

    def _batch_end(self, batch: Any) -> None:
        if self.meter is not None and self.meter.active:
            self.meter.stop()
            self.meter.add_samples(self.batch_size_fn(batch))

    def _discard(self) -> None:
        if self.meter is not None:
            self.meter.stop()
        self.meter = None

    def _epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        meter, self.meter = self.meter, None
        if meter is None:
            return
        meter.stop()
        if meter.samples == 0:
            return
        report = meter.report()
        self.last_report = report
        values = {
            "energy/mj_per_sample": report.energy_mj_per_sample,
            "energy/ann_mj_per_sample": report.ann_energy_mj_per_sample,
            "energy/ac_ops_per_sample": report.ac_ops_per_sample,
            "energy/mac_flops_per_sample": report.mac_flops_per_sample,
        }
        if report.mean_firing_rate is not None:
            values["energy/mean_firing_rate"] = report.mean_firing_rate
        for k, v in values.items():
            pl_module.log(k, float(v), on_step=False, on_epoch=True, sync_dist=True)
        if trainer.is_global_zero:
            self._write(trainer, report, stage)

    def _write(self, trainer: pl.Trainer, report: EnergyReport, stage: str) -> None:
        run_dir = trainer.default_root_dir
        os.makedirs(run_dir, exist_ok=True)
        data = {"stage": stage, "epoch": trainer.current_epoch, "global_step": trainer.global_step}
        data.update(report.to_dict())
        with open(os.path.join(run_dir, "energy.json"), "w") as f:
            json.dump(data, f, indent=2)
        with open(os.path.join(run_dir, "energy_layers.csv"), "w", newline="") as f:
            f.write(report.layers_csv())
        png = None
        if self.plot and report.neurons:
            png = os.path.join(run_dir, "firing_rates.png")
            plot_firing_rates(report, png)
        for lg in trainer.loggers:
            if is_wandb(lg):
                log_to_wandb(lg, report, step=trainer.global_step, png=png)

    # -- Lightning hooks ----------------------------------------------------------------------

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start(trainer, pl_module, "validate")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_start(batch_idx, dataloader_idx)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._batch_end(batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._epoch_end(trainer, pl_module, "validate")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start(trainer, pl_module, "test")

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_start(batch_idx, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_end(batch)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._epoch_end(trainer, pl_module, "test")

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._discard()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._discard()
