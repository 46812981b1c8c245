"""spikelight: a PyTorch Lightning experiment framework for efficient multimodal models.

Import layout (see setup.cfg ``package_dir``):

- ``spikelight``              core: CLI, neurons (``spikelight.nn``), models, tasks, losses
- ``spikelight.datamodules``  LightningDataModules (point clouds, events, video, images, synthetic)
- ``spikelight.callbacks``    callbacks (memory use, spike energy, plots)

Launch anything with ``spikelight <subcommand> --config experiments/<method>/<exp>.yaml``.
"""

__version__ = "0.1.0"
