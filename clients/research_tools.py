"""The executor's research tools for programs (``ArcClient.tools``): preprocess a
dataset, sync datasets with DVC, list, delete and thin checkpoints. Every call is
governed by the executor (checked, transacted, audited) under the caller's token."""

from __future__ import annotations

from typing import Any

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc_common.convert import enum_value, to_model, to_proto
from arc_common.models import CheckpointInfo, MetricMode, PreprocessingChain
from arc_common.rpc import unary

PAGE_SIZE = 1000
SLOW_SECONDS = 600.0  # preprocessing or a DVC transfer reads every file


class ResearchTools:
    def __init__(self, executor: executor_pb2_grpc.ExecutorServiceStub, timeout: float) -> None:
        self._executor = executor
        self._timeout = timeout

    async def preprocess(
        self,
        input_path: str,
        output_path: str,
        chain: PreprocessingChain,
        *,
        dataset_id: str,
        request_id: str = "",
    ) -> dict[str, Any]:
        """The manifest of the preprocessed copy, the images that failed, and whether the
        same chain on the same input was reused."""
        reply = await unary(
            self._executor.PreprocessDataset(
                executor_pb2.PreprocessDatasetRequest(
                    request_id=request_id,
                    dataset_id=dataset_id,
                    input_path=input_path,
                    output_path=output_path,
                    chain=to_proto(chain, common_pb2.PreprocessingChain),
                ),
                timeout=max(self._timeout, SLOW_SECONDS),
            )
        )
        manifest = reply.manifest
        return {
            "output_path": manifest.output_path,
            "images_per_class": dict(manifest.images_per_class),
            "image_size": [manifest.image_width, manifest.image_height],
            "chain_hash": manifest.chain_hash,
            "failed_images": list(reply.failed_images),
            "reused": reply.reused,
        }

    async def sync_datasets(
        self, dataset_ids: list[str], *, push: bool, remote: str = "", request_id: str = ""
    ) -> list[dict[str, Any]]:
        direction = executor_pb2.SYNC_DIRECTION_PUSH if push else executor_pb2.SYNC_DIRECTION_PULL
        reply = await unary(
            self._executor.SyncDatasets(
                executor_pb2.SyncDatasetsRequest(
                    request_id=request_id,
                    direction=direction,
                    dataset_ids=dataset_ids,
                    remote=remote,
                ),
                timeout=max(self._timeout, SLOW_SECONDS),
            )
        )
        return [
            {
                "dataset_id": t.dataset_id,
                "files": t.files_transferred,
                "bytes": t.bytes_transferred,
                "revision": t.revision,
            }
            for t in reply.transfers
        ]

    async def checkpoints(
        self, checkpoint_dir: str = "", *, run_id: str = ""
    ) -> list[CheckpointInfo]:
        """Every checkpoint of a folder (or of a run), page after page."""
        out: list[CheckpointInfo] = []
        token = ""
        while True:
            reply = await unary(
                self._executor.ListCheckpoints(
                    executor_pb2.ListCheckpointsRequest(
                        checkpoint_dir=checkpoint_dir,
                        run_id=run_id,
                        page_size=PAGE_SIZE,
                        page_token=token,
                    ),
                    timeout=self._timeout,
                )
            )
            out += [to_model(c, CheckpointInfo) for c in reply.checkpoints]
            token = reply.next_page_token
            if not token:
                return out

    async def _delete(self, request: executor_pb2.DeleteCheckpointRequest) -> list[str]:
        reply = await unary(self._executor.DeleteCheckpoint(request, timeout=self._timeout))
        return list(reply.deleted_paths)

    async def delete_checkpoint(self, path: str, *, request_id: str = "") -> list[str]:
        return await self._delete(
            executor_pb2.DeleteCheckpointRequest(request_id=request_id, path=path)
        )

    async def keep_best(
        self,
        checkpoint_dir: str,
        keep: int,
        *,
        metric: str = "val_auc",
        mode: MetricMode = MetricMode.MAX,
        request_id: str = "",
    ) -> list[str]:
        """Operator only: the best ``keep`` by ``metric`` stay, the rest are deleted."""
        rule = executor_pb2.RetentionRule(
            checkpoint_dir=checkpoint_dir,
            keep_best=keep,
            metric=metric,
            mode=enum_value(common_pb2.MetricMode, mode),
        )
        return await self._delete(
            executor_pb2.DeleteCheckpointRequest(request_id=request_id, retention=rule)
        )

    async def apply_patch(
        self, repository: str, patch: str, *, message: str = "", request_id: str = ""
    ) -> dict[str, Any]:
        """A governed ApplyCodePatch: the new commit, the files it changed and its size."""
        reply = await unary(
            self._executor.ApplyCodePatch(
                executor_pb2.ApplyCodePatchRequest(
                    request_id=request_id, repository=repository, patch=patch, message=message
                ),
                timeout=max(self._timeout, 120),
            )
        )
        return {
            "commit_sha": reply.commit_sha,
            "patch_sha256": reply.patch_sha256,
            "files_changed": list(reply.files_changed),
            "lines_added": reply.lines_added,
            "lines_removed": reply.lines_removed,
        }
