"""LightningModules, one per job. Import them by full path in configs (``spikelight.tasks.toy.ToyClassifier``)."""
