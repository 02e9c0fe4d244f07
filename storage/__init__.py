"""Content-addressed artifact store: stage keys, shard commits, manifests, verification."""

from cirflow.storage.keys import item_seed, stage_key
from cirflow.storage.manifest import Manifest
from cirflow.storage.stage_run import Shard, StageReport, StageRun, begin
from cirflow.storage.store import Artifact, ArtifactStore, Problem

__all__ = ["Artifact", "ArtifactStore", "Manifest", "Problem", "Shard", "StageReport", "StageRun", "begin",
           "item_seed", "stage_key"]
