"""The tools that change a workspace's data and code: DVC sync of datasets and patches to
the registered git repositories, each governed (checked, transacted, audited)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from arc_common.errors import InvalidArgumentError, NotFoundError, PermissionDeniedError
from arc_common.models import CodeSource, DatasetSpec, Tool
from arc_common.paths import resolve_data, resolve_in_root
from services.executor import code_sources, dataset_check
from services.executor.sealed import SealGuard
from services.executor.settings import ExecutorSettings
from services.executor.tools import dvcsync, patches
from services.executor.tools.access import Access
from services.executor.tools.governed import Governed


class SourceTools:
    def __init__(
        self, settings: ExecutorSettings, governed: Governed, access: Access, seals: SealGuard
    ) -> None:
        self.settings = settings
        self.seals = seals
        self.home = settings.home.resolve()
        self.governed = governed
        self.access = access

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.home))

    # --- sync_datasets -----------------------------------------------------------

    def _check_dataset_ids(self, dataset_ids: list[str]) -> None:
        for index, dataset_id in enumerate(dataset_ids):
            self.access.dataset_id(f"dataset_ids[{index}]", dataset_id)

    async def sync(
        self, *, caller: str, request_id: str, push: bool, dataset_ids: list[str], remote: str
    ) -> list[dvcsync.Transfer]:
        if not dataset_ids:
            raise InvalidArgumentError(
                "dataset_ids must name at least one dataset", field="dataset_ids"
            )
        if len(dataset_ids) > self.settings.max_sync_datasets:
            raise InvalidArgumentError(
                f"dataset_ids may name at most {self.settings.max_sync_datasets} datasets "
                f"(got {len(dataset_ids)})",
                field="dataset_ids",
            )
        if len(set(dataset_ids)) != len(dataset_ids):
            raise InvalidArgumentError("dataset_ids must not repeat a dataset", field="dataset_ids")
        await asyncio.to_thread(self._check_dataset_ids, dataset_ids)
        params = {"direction": "push" if push else "pull", "dataset_ids": dataset_ids}
        await self.governed.check(Tool.SYNC_DATASETS, params, caller=caller, request_id=request_id)
        # Another remote may only be a folder inside the workspace: no agent points DVC at
        # an arbitrary path of this machine.
        target = (
            str(self.access.path("remote", remote))
            if remote
            else self.settings.dvc_remote or str(self.home / "dvc-remote")
        )
        touched = [f"datasets/{d}.dvc" for d in dataset_ids]
        if not push:
            touched += [f"datasets/{d}" for d in dataset_ids]
        async with self.governed.transaction(
            Tool.SYNC_DATASETS, touched, caller=caller, request_id=request_id
        ):
            await asyncio.to_thread(dvcsync.ensure_repo, self.home, target)
            out = []
            for dataset_id in dataset_ids:
                action = dvcsync.push if push else dvcsync.pull
                out.append(await asyncio.to_thread(action, self.home, dataset_id))
        return out

    # --- apply_code_patch -----------------------------------------------------------

    async def patch(
        self, *, caller: str, request_id: str, repository: str, patch: str, message: str
    ) -> tuple[str, patches.PatchPlan]:
        if repository not in self.settings.repositories:
            known = ", ".join(sorted(self.settings.repositories)) or "none"
            raise NotFoundError(
                f"no registered repository {repository!r} (registered: {known})", field="repository"
            )
        repo = resolve_in_root(
            self.home, self.settings.repositories[repository], field="repository"
        )
        patches.ensure_repository(repo)
        repo_rel = self._rel(repo)
        plan = await asyncio.to_thread(patches.plan, patch, repo, repo_rel)
        # The policy checks the paths and modes git found, not a parse of its own.
        await self.governed.check(
            Tool.APPLY_CODE_PATCH,
            {
                "repository": repository,
                "patch": patch,
                "message": message[:500],
                **plan.parameters(),
            },
            caller=caller,
            request_id=request_id,
        )
        touched = [f"{repo_rel}/{f}" for f in plan.files] + [
            f"{repo_rel}/.git/index",
            f"{repo_rel}/.git/HEAD",
            f"{repo_rel}/.git/refs/heads",
            f"{repo_rel}/.git/packed-refs",
        ]
        async with self.governed.transaction(
            Tool.APPLY_CODE_PATCH, touched, caller=caller, request_id=request_id
        ):
            sha = await asyncio.to_thread(patches.apply, repo, patch, message, plan, repo_rel)
        return sha, plan

    # --- resolve_source -------------------------------------------------------------

    async def resolve(self, source: CodeSource) -> CodeSource:
        """Read-only (nothing changes), so not a governed tool call."""
        return await asyncio.to_thread(
            code_sources.resolve, self.home, self.settings.repositories, source
        )

    async def check_dataset(
        self, dataset: DatasetSpec, sealed: list[str]
    ) -> tuple[list[str], bool]:
        return await asyncio.to_thread(self._check_dataset, dataset, sealed)

    def _check_dataset(self, dataset: DatasetSpec, sealed: list[str]) -> tuple[list[str], bool]:
        guard = self.seals
        path = resolve_data(
            self.home, self.settings.data_root, dataset.data_path, field="dataset.data_path"
        )
        try:
            guard.check_read(
                path, guard.roots(sealed), field="dataset.data_path", shown="", training=True
            )
        except PermissionDeniedError:  # not looked into: its run refuses it
            return [], False
        return dataset_check.check(path, dataset)
