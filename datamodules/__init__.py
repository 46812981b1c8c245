"""spikelight DataModules.

Every DataModule yields batches as ``dict``s with stable keys, used everywhere in spikelight:

=============  ==============================================================================
key            meaning
=============  ==============================================================================
``points``     float32 ``[B, N, 6]`` point cloud: xyz (unit sphere) + rgb in [0, 1] (0.4 if absent);
               DVS events as points: ``[B, T, N, 3]`` (x, y, normalised time in [0, 1])
``image``      float32 ``[B, 3, H, W]``: a rendered view / photo (in [0, 1] or normalised, per module)
``text``       ``list[str]``: one caption per sample
``image_feat`` float32 ``[B, D]``: precomputed CLIP image features (OpenShape style)
``text_feat``  float32 ``[B, D]``: precomputed CLIP text features
``label``      int64 ``[B]``: class index
``events``     DVS event frames float32 ``[B, T, 2, H, W]`` (channel 0 OFF, 1 ON)
``frames``     video frames ``[B, M, 3, H, W]``
``question``   ``list[str]``; ``answer``: ``list[str]`` or int64 ``[B]`` (multiple choice)
``x``          float32 ``[B, F]`` features of the toy experiment
=============  ==============================================================================

Modules: ``synthetic`` (toy), ``synthetic3d`` (procedural 3D triplets), ``pointcloud`` (ModelNet40,
ScanObjectNN, ShapeNet-55/ULIP, OpenShape), ``images`` (ImageNet, synthetic shapes), ``events``
(DVS128 Gesture, N-MNIST, N-CARS, AEDAT; synthetic DVS).
"""
