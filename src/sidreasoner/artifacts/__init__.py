"""The typed artifacts of the steps: one class per kind of step output, each owning its file names, schema,
readers and writers. A step receives handles of these classes (path-like: `os.fspath(handle)` is the folder)
and writes through them; nothing outside this package spells an artifact's file names."""

from sidreasoner.artifacts.base import Artifact, ArtifactFileMissing, ArtifactSchemaError, KfpType
from sidreasoner.artifacts.corpus import Corpus
from sidreasoner.artifacts.dataset import SPLITS, Dataset
from sidreasoner.artifacts.deployment import Deployment
from sidreasoner.artifacts.embeddings import Embeddings
from sidreasoner.artifacts.evaluation import Evaluation
from sidreasoner.artifacts.export import ModelExport
from sidreasoner.artifacts.model import ModelFolder
from sidreasoner.artifacts.raw import RawData
from sidreasoner.artifacts.report import ReportPages
from sidreasoner.artifacts.sid_index import SidIndex
from sidreasoner.artifacts.stage3 import Stage3Checkpoint

__all__ = [
    "SPLITS",
    "Artifact",
    "ArtifactFileMissing",
    "ArtifactSchemaError",
    "Corpus",
    "Dataset",
    "Deployment",
    "Embeddings",
    "Evaluation",
    "KfpType",
    "ModelExport",
    "ModelFolder",
    "RawData",
    "ReportPages",
    "SidIndex",
    "Stage3Checkpoint",
]
