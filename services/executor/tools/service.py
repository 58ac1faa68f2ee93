"""The AcuVue research tools, each governed: checked, transacted, audited."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from arc_common.auth import Role
from arc_common.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from arc_common.models import CheckpointInfo, Lease, MetricMode, PreprocessingChain, Tool
from arc_common.models.specs import (
    DATASET_ID_PATTERN,
    DEFAULT_BOOTSTRAP,
    MAX_BOOTSTRAP,
    MIN_BOOTSTRAP,
)
from arc_common.untrusted import write_no_follow
from services.executor.tools import checkpoints as ckpt
from services.executor.tools.base import ToolBase, dataset_id_of, split_of
from services.executor.tools.preprocess import PreprocessResult, preprocess

SPLITS = {"train", "val", "test"}
VISUALIZATIONS = ("gradcam", "attention")
DATASET_ID = re.compile(DATASET_ID_PATTERN)


class Tools(ToolBase):
    """The tools an agent calls (each method one RPC); paths and processes in ToolBase."""

    # --- preprocess_dataset -----------------------------------------------------------

    async def preprocess(
        self,
        *,
        caller: str,
        request_id: str,
        dataset_id: str,
        input_path: str,
        output_path: str,
        chain: PreprocessingChain,
        role: Role = Role.AGENT,
    ) -> PreprocessResult:
        if not dataset_id:
            raise InvalidArgumentError("dataset_id is required", field="dataset_id")
        params = {
            "dataset_id": dataset_id,
            "input_path": input_path,
            "output_path": output_path,
            "chain": chain.model_dump(mode="json"),
        }
        decision = await self.governed.check(
            Tool.PREPROCESS_DATASET, params, caller=caller, request_id=request_id
        )
        source = self._data(input_path, "input_path")
        if not source.is_dir():
            raise InvalidArgumentError(
                f"input_path {input_path!r} is not a folder", field="input_path"
            )
        output = self.access.path("output_path", output_path)
        if role is not Role.OPERATOR:
            await asyncio.to_thread(
                self.seals.check_copy,
                decision.sealed_test_datasets,
                source,
                output,
                shown=(input_path, output_path),
            )
        async with self.governed.transaction(
            Tool.PREPROCESS_DATASET, [self._rel(output)], caller=caller, request_id=request_id
        ):
            return await asyncio.to_thread(
                preprocess, dataset_id, source, output, self._rel(output), chain
            )

    # --- run_evaluation_job -----------------------------------------------------------

    # --- run_evaluation_job -----------------------------------------------------------

    async def evaluate(
        self,
        *,
        caller: str,
        request_id: str,
        checkpoint_path: str,
        data_path: str,
        split: str,
        bootstrap: int,
        seed: int,
        dataset_id: str,
        lease: Lease | None,
        role: Role = Role.AGENT,
        operator_job: bool = False,
    ) -> tuple[dict[str, Any], str]:
        if lease is not None:  # a claim until the gpu-manager confirms it; then its GPUs
            lease = await self.leases.verify(lease)
        split = split_of(split)
        if not MIN_BOOTSTRAP <= bootstrap <= MAX_BOOTSTRAP:
            raise InvalidArgumentError(
                f"bootstrap_samples must be in [{MIN_BOOTSTRAP}, {MAX_BOOTSTRAP}] "
                f"(got {bootstrap}); leave it unset for {DEFAULT_BOOTSTRAP}",
                field="bootstrap_samples",
            )
        dataset_id = dataset_id_of(dataset_id, data_path)
        params = {
            "checkpoint_path": checkpoint_path,
            "data_path": data_path,
            "split": split,
            "bootstrap_samples": bootstrap,
            "dataset_id": dataset_id,
        }
        decision = await self.governed.check(
            Tool.RUN_EVALUATION_JOB, params, caller=caller, request_id=request_id
        )
        data = self._data(data_path, "data_path")
        checkpoint, digest = await self._registered(checkpoint_path)
        trusted = role is Role.OPERATOR or (role is Role.SERVICE and operator_job)
        await self._sealed(
            trusted,
            decision.sealed_test_datasets,
            data,
            split,
            [checkpoint],
            shown=data_path,
        )
        # Keyed by everything it measured: a second dataset, split or folder never
        # overwrites the first report.
        where = hashlib.sha256(data_path.encode()).hexdigest()[:10]
        report_path = checkpoint.with_name(
            f"{checkpoint.stem}.eval-{split}-{dataset_id}-{where}.json"
        )
        stem = report_path.with_suffix("")
        figures = [stem.with_name(f"{stem.name}-{kind}.png") for kind in ("roc", "reliability")]
        written = [self._rel(p) for p in (report_path, *figures)]
        async with self.governed.transaction(
            Tool.RUN_EVALUATION_JOB, written, caller=caller, request_id=request_id
        ):
            report = await self._child(
                {
                    "tool": "evaluate",
                    "checkpoint": str(checkpoint),
                    "sha256": digest,
                    "data_path": str(data),
                    "data_path_name": data_path,
                    "dataset_id": dataset_id,
                    "split": split,
                    "bootstrap": bootstrap,
                    "seed": seed,
                    "figures": str(stem),
                },
                lease,
            )
            report["checkpoint_path"] = checkpoint_path
            for key in ("roc_curve_png", "reliability_diagram_png"):
                if report["evaluation"].get(key):
                    report["evaluation"][key] = self._rel(Path(report["evaluation"][key]))
            report["provenance"]["checkpoint_path"] = checkpoint_path
            write_no_follow(report_path, json.dumps(report, indent=2))
        return report, self._rel(report_path)

    async def compare(
        self,
        *,
        caller: str,
        request_id: str,
        checkpoint_paths: tuple[str, str],
        data_path: str,
        split: str,
        dataset_id: str,
        role: Role = Role.AGENT,
    ) -> tuple[dict[str, Any], str]:
        split = split_of(split)
        dataset_id = dataset_id_of(dataset_id, data_path)
        params = {
            "checkpoint_path": checkpoint_paths[0],
            "checkpoint_path_b": checkpoint_paths[1],
            "data_path": data_path,
            "split": split,
            "dataset_id": dataset_id,
        }
        decision = await self.governed.check(
            Tool.RUN_EVALUATION_JOB, params, caller=caller, request_id=request_id
        )
        data = self._data(data_path, "data_path")
        first, digest_a = await self._registered(checkpoint_paths[0], "checkpoint_path_a")
        second, digest_b = await self._registered(checkpoint_paths[1], "checkpoint_path_b")
        await self._sealed(
            role is Role.OPERATOR,
            decision.sealed_test_datasets,
            data,
            split,
            [first, second],
            shown=data_path,
        )
        # Beside A, keyed by B, the split and the dataset: no comparison overwrites another.
        key = hashlib.sha256(f"{checkpoint_paths[1]}\0{data_path}".encode()).hexdigest()[:10]
        report_path = first.with_name(f"{first.stem}.compare-{split}-{dataset_id}-{key}.json")
        async with self.governed.transaction(
            Tool.RUN_EVALUATION_JOB, [self._rel(report_path)], caller=caller, request_id=request_id
        ):
            report = await self._child(
                {
                    "tool": "compare",
                    "checkpoint_a": str(first),
                    "checkpoint_b": str(second),
                    "sha256_a": digest_a,
                    "sha256_b": digest_b,
                    "data_path": str(data),
                    "split": split,
                },
                None,
            )
            report |= {
                "checkpoint_path_a": checkpoint_paths[0],
                "checkpoint_path_b": checkpoint_paths[1],
                "dataset_id": dataset_id,
            }
            write_no_follow(report_path, json.dumps(report, indent=2))
        return report, self._rel(report_path)

    # --- manage_checkpoints -----------------------------------------------------------

    async def _folder(
        self, checkpoint_dir: str, run_id: str, field: str = "checkpoint_dir"
    ) -> Path:
        if run_id:
            run = await self.runs.get(run_id)
            assert run.config is not None
            checkpoint_dir = run.config.checkpoint_dir
        if not checkpoint_dir:
            raise InvalidArgumentError("give checkpoint_dir or run_id", field=field)
        folder = self.access.path(field, checkpoint_dir)
        if not folder.is_dir():
            raise NotFoundError(f"no folder {checkpoint_dir!r}", field=field)
        return folder

    async def list_checkpoints(
        self, *, caller: str, checkpoint_dir: str, run_id: str
    ) -> list[CheckpointInfo]:
        await self.governed.check(
            Tool.MANAGE_CHECKPOINTS,
            {"action": "list", "checkpoint_dir": checkpoint_dir, "run_id": run_id},
            caller=caller,
            request_id="",
        )
        folder = await self._folder(checkpoint_dir, run_id)
        return await asyncio.to_thread(ckpt.list_checkpoints, folder, self.home)

    async def delete(
        self,
        *,
        caller: str,
        role: Role,
        request_id: str,
        path: str,
        retention: tuple[str, int, str, MetricMode] | None,
    ) -> tuple[list[str], str]:
        """The deleted checkpoints and the governance transaction that deleted them
        (none when nothing matched)."""
        if retention is not None:
            if role is not Role.OPERATOR:
                raise PermissionDeniedError(
                    "only an operator may apply a retention rule", field="retention"
                )
            folder_rel, keep, metric, mode = retention
            if keep < 0:
                raise InvalidArgumentError(
                    "retention.keep_best must be >= 0", field="retention.keep_best"
                )
            params: dict[str, Any] = {
                "action": "retention",
                "checkpoint_dir": folder_rel,
                "keep_best": keep,
                "metric": metric or "val_auc",
            }
            await self.governed.check(
                Tool.MANAGE_CHECKPOINTS, params, caller=caller, request_id=request_id
            )
            folder = await self._folder(folder_rel, "", "retention.checkpoint_dir")
            infos = await asyncio.to_thread(ckpt.list_checkpoints, folder, self.home)
            victims = [
                self.home / i.path
                for i in ckpt.retention_victims(
                    infos, keep=keep, metric=metric or "val_auc", mode=mode
                )
            ]
        else:
            if not path:
                raise InvalidArgumentError("give path or retention", field="path")
            await self.governed.check(
                Tool.MANAGE_CHECKPOINTS,
                {"action": "delete", "path": path},
                caller=caller,
                request_id=request_id,
            )
            victims = [self._checkpoint(path, "path")]
            await self._owned(victims[0], "path", caller, role)
        if not victims:
            return [], ""
        touched = [self._rel(p) for v in victims for p in ckpt.companions(v)]
        async with self.governed.transaction(
            Tool.MANAGE_CHECKPOINTS, touched, caller=caller, request_id=request_id
        ) as transaction_id:
            for victim in victims:
                for item in ckpt.companions(victim):
                    item.unlink(missing_ok=True)
        return [self._rel(v) for v in victims], transaction_id

    # --- generate_visualizations -----------------------------------------------------------

    async def visualize(
        self,
        *,
        caller: str,
        role: Role,
        request_id: str,
        checkpoint_path: str,
        data_path: str,
        split: str,
        count: int,
        output_dir: str,
        method: str = "gradcam",
    ) -> tuple[list[dict[str, Any]], str]:
        """Grad-CAM (``method`` "gradcam", any model) or attention rollout ("attention",
        ViT models only: INVALID_ARGUMENT naming ``method`` for the others)."""
        if method not in VISUALIZATIONS:
            raise InvalidArgumentError(f"method must be one of {VISUALIZATIONS}", field="method")
        split = split_of(split)
        count = count or 8
        if not 1 <= count <= 256:
            raise InvalidArgumentError("num_images must be in [1, 256]", field="num_images")
        params = {
            "checkpoint_path": checkpoint_path,
            "data_path": data_path,
            "num_images": count,
            "output_dir": output_dir,
            "split": split,
        }
        decision = await self.governed.check(
            Tool.GENERATE_VISUALIZATIONS, params, caller=caller, request_id=request_id
        )
        data = self._data(data_path, "data_path")
        chosen = self.access.path("output_dir", output_dir) if output_dir else None
        checkpoint, digest = await self._registered(checkpoint_path)
        await self._sealed(
            role is Role.OPERATOR,
            decision.sealed_test_datasets,
            data,
            split,
            [checkpoint],
            shown=data_path,
        )
        output = chosen or checkpoint.parent.parent / method
        await self._owned(output, "output_dir", caller, role)
        async with self.governed.transaction(
            Tool.GENERATE_VISUALIZATIONS, [self._rel(output)], caller=caller, request_id=request_id
        ):
            images = await self._child(
                {
                    "tool": method,
                    "checkpoint": str(checkpoint),
                    "sha256": digest,
                    "data_path": str(data),
                    "split": split,
                    "output": str(output),
                    "count": count,
                },
                None,
            )
        for image in images:
            image["path"] = self._rel(output / image["path"])
        return images, self._rel(output / "index.json")
