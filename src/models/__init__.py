"""spikelight models: one file per family, variants registered where they are defined.

``create_model(name, **kw)`` builds any variant, ``list_models(pattern)`` lists them (every family has
a tiny ``*_test`` variant), ``build_model(spec)`` resolves the network spec a task receives from its
config (a registered name, ``{name: ..., **kwargs}`` or ``{class_path: ..., init_args: ...}``).

Registered variants (sizes and parameter counts in each family file's docstring):

* ``pointnet_snn``: ``spike_pointnet`` (3.60M at C = 512), ``spike_pointnet_test`` (SVL 3D encoder)
* ``e3dsnn``: ``e3dsnn_t``, ``e3dsnn_s``, ``e3dsnn_l``, ``e3dsnn_h`` (1.9M to 46.8M), ``e3dsnn_test`` (SVL)
* ``pointformer_snn``: ``pointformer_snn_l`` (22.3M), ``pointformer_snn_test`` (SVL)
* ``trevsnn``: ``trevsnn_tiny`` (15.2M), ``trevsnn_small`` (29.8M), ``trevsnn_test`` (TRevSNNClassify;
  the DVS variant is ``dvs=True``)
* ``toy_snn``: ``toy_mlp``, ``toy_snn``, ``toy_snn_test`` (ToyClassifier)

The 3D encoders share one interface::

    enc = create_model("e3dsnn_s", embed_dim=1280)
    emb = enc(points)            # points [B, N, F] (F = 6: xyz + rgb in [0, 1], or 3) -> [B, C]
    enc.timesteps                # T (1 for 3D); [T, B, N, F] inputs are also accepted
    enc.embed_dim                # C (default 1280, open_clip ViT-bigG-14)
    enc.real_input_layers        # names of the conv/linear layers fed real values (MAC layers)

For ``T > 1`` their neurons run over ``[T, B, ...]`` (a ``[B, N, F]`` input repeated over time, or a
``[T, B, N, F]`` input as given) and the output is the mean over time of the final embedding.
"""

from spikelight.models.registry import (
    ModelConfig,
    ModelSpec,
    build_model,
    create_model,
    is_model,
    list_models,
    model_family,
    register_model,
    spec_name,
)

__all__ = [
    "ModelConfig",
    "ModelSpec",
    "build_model",
    "create_model",
    "is_model",
    "list_models",
    "model_family",
    "register_model",
    "spec_name",
]
