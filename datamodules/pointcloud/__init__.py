"""Point-cloud data for SVL (3D <-> CLIP alignment and zero-shot evaluation).

Modules: :mod:`.io` (readers: ModelNet40 text, h5, PLY via plyfile, OFF and surface sampling via trimesh,
``.npy`` / OpenShape ``.npz`` records, images), :mod:`.transforms` (sampling and the SVL augmentations),
:mod:`.labels` (class names, prompt templates, ShapeNet taxonomy), :mod:`.base` (shared dataset and
DataModule, batch convention), and one file per dataset: :mod:`.modelnet40`, :mod:`.scanobjectnn`,
:mod:`.shapenet55` (ULIP triplets), :mod:`.openshape` (triplets with CLIP features), :mod:`.synthetic3d`
(procedural triplets, meshes in :mod:`.procedural`); part segmentation: :mod:`.shapenetpart` (ShapeNetPart,
:class:`PartTable`) and :mod:`.synthetic_parts` (procedural objects' parts); 3D question answering:
:mod:`.qa` ((points, question, answer) JSONL and synthetic scenes).
"""

from spikelight.datamodules.base import collate_dict as collate_pointcloud
from spikelight.datamodules.pointcloud.base import (
    H5PointCloudDataset,
    PointCloudDataModule,
    PointCloudDataset,
)
from spikelight.datamodules.pointcloud.io import (
    load_image,
    load_point_cloud,
    read_h5_pointclouds,
    read_modelnet_txt,
    read_modelnet_txt_cached,
    read_npy_points,
    read_off,
    read_ply,
    read_shape_record,
    sample_mesh_surface,
)
from spikelight.datamodules.pointcloud.labels import (
    PROMPT_TEMPLATES,
    SCANOBJECTNN_CLASSES,
    humanize,
    load_labels,
    load_shapenet_taxonomy,
    load_templates,
)
from spikelight.datamodules.pointcloud.modelnet40 import ModelNet40DataModule, ModelNet40Dataset
from spikelight.datamodules.pointcloud.openshape import OpenShapeTripletDataModule, OpenShapeTripletDataset
from spikelight.datamodules.pointcloud.qa import (
    PointQADataset,
    PointQAJsonlDataModule,
    SyntheticPointQADataModule,
    export_synthetic_qa,
    read_qa_jsonl,
    write_qa_jsonl,
)
from spikelight.datamodules.pointcloud.scanobjectnn import ScanObjectNNDataModule, ScanObjectNNDataset
from spikelight.datamodules.pointcloud.shapenet55 import ShapeNet55TripletDataModule, ShapeNet55TripletDataset
from spikelight.datamodules.pointcloud.shapenetpart import (
    SHAPENETPART,
    PartTable,
    ShapeNetPartDataModule,
    ShapeNetPartDataset,
)
from spikelight.datamodules.pointcloud.synthetic3d import Synthetic3DDataModule, Synthetic3DDataset
from spikelight.datamodules.pointcloud.synthetic_parts import (
    SyntheticPartsDataModule,
    SyntheticPartsDataset,
    synthetic_part_table,
)
from spikelight.datamodules.pointcloud.transforms import PointCloudTransform, farthest_point_sample

__all__ = [
    "PROMPT_TEMPLATES",
    "SCANOBJECTNN_CLASSES",
    "farthest_point_sample",
    "collate_pointcloud",
    "load_templates",
    "load_labels",
    "load_shapenet_taxonomy",
    "humanize",
    "read_modelnet_txt",
    "read_modelnet_txt_cached",
    "read_h5_pointclouds",
    "read_ply",
    "read_off",
    "read_npy_points",
    "read_shape_record",
    "sample_mesh_surface",
    "load_point_cloud",
    "load_image",
    "PointCloudTransform",
    "PointCloudDataset",
    "ModelNet40Dataset",
    "H5PointCloudDataset",
    "ScanObjectNNDataset",
    "ShapeNet55TripletDataset",
    "OpenShapeTripletDataset",
    "Synthetic3DDataset",
    "PointCloudDataModule",
    "ModelNet40DataModule",
    "ScanObjectNNDataModule",
    "ShapeNet55TripletDataModule",
    "OpenShapeTripletDataModule",
    "Synthetic3DDataModule",
    "SHAPENETPART",
    "PartTable",
    "ShapeNetPartDataset",
    "ShapeNetPartDataModule",
    "SyntheticPartsDataset",
    "SyntheticPartsDataModule",
    "synthetic_part_table",
    "PointQADataset",
    "PointQAJsonlDataModule",
    "SyntheticPointQADataModule",
    "read_qa_jsonl",
    "write_qa_jsonl",
    "export_synthetic_qa",
]
