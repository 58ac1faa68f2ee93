"""What a run reads and writes, checked before its trainer starts: its folders inside the
workspace, its dataset (at the DVC revision its spec names), and the checkpoint a retry
resumes from; then the ``TrainerInput`` that tells its trainer."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from arc_common.errors import ArcError, InvalidArgumentError, PermissionDeniedError
from arc_common.models import Run, TrainingJobConfig
from arc_common.paths import resolve_data, resolve_in_root
from services.executor import code_sources, retention
from services.executor.protocol import (
    CHECKSUM_SUFFIX,
    META_SUFFIX,
    Sandbox,
    TrainerInput,
    file_sha256,
)
from services.executor.registry import CheckpointRegistry
from services.executor.sealed import SealGuard
from services.executor.settings import ExecutorSettings

logger = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]


def _check_reachable(path: Path, uid: int, gid: int, user: str) -> None:
    """Every folder down to ``path`` must let the sandbox user through (execute bit)."""
    for folder in [*reversed(path.resolve().parents), path.resolve()]:
        info = folder.stat()
        bit = 0o100 if info.st_uid == uid else 0o010 if info.st_gid == gid else 0o001
        if not info.st_mode & bit:
            # Not FAILED_PRECONDITION: the scheduler takes that for a stale lease and
            # would place the job again and again.
            raise PermissionDeniedError(
                f"sandbox_user {user!r} cannot reach {path}: {folder} is mode "
                f"{info.st_mode & 0o777:o}; let it through (chmod o+x {folder}), or set "
                "ARC_EXECUTOR_SANDBOX_USER to a user that can (docs/security.md)",
                field="sandbox_user",
            )


@dataclass(frozen=True)
class RunPaths:
    checkpoint_dir: Path
    log_dir: Path
    data_path: Path
    resume: str  # "" when starting afresh
    resume_sha256: str = ""  # its registered digest ("" when unregistered: not loaded)
    init_from: str = ""  # the checkpoint a fine-tune starts from, and its digest
    init_sha256: str = ""
    source_dir: str = ""  # the export of a code-defined spec's commit
    sandbox: Sandbox | None = None


class RunInputs:
    def __init__(self, settings: ExecutorSettings, checkpoints: CheckpointRegistry) -> None:
        self.settings = settings
        self.home = settings.home.resolve()
        self.checkpoints = checkpoints
        self.seals = SealGuard(self.home, settings.data_root, checkpoints)
        self.quota = retention.Quota(self.home, settings.checkpoint_quota_gb)

    async def check(self, config: TrainingJobConfig) -> RunPaths:
        """The run's paths, each inside the workspace (INVALID_ARGUMENT naming the field
        otherwise); its checkpoint folder claimed for its submitter."""
        spec = config.experiment_spec
        await asyncio.to_thread(self.quota.check)
        checkpoint_dir = resolve_in_root(self.home, config.checkpoint_dir, field="checkpoint_dir")
        log_dir = resolve_in_root(self.home, config.log_dir, field="log_dir")
        await asyncio.to_thread(self.checkpoints.claim, checkpoint_dir, config.submitted_by)
        data_path = resolve_data(
            self.home, self.settings.data_root, spec.dataset.data_path, field="dataset.data_path"
        )
        if spec.dataset.dvc_revision:  # a copy of its own; the working copy stays as it is
            data_path = await self._checkout_revision(
                spec.dataset.data_path, spec.dataset.dvc_revision
            )
        resume, resume_sha256 = "", ""
        if config.resume_from:
            candidate = resolve_in_root(self.home, config.resume_from, field="config.resume_from")
            resume = str(candidate) if candidate.is_file() else ""
        if not data_path.is_dir():
            raise InvalidArgumentError(
                f"dataset.data_path {spec.dataset.data_path!r} is not a directory "
                f"(looked at {data_path})",
                field="dataset.data_path",
            )
        await asyncio.to_thread(self._check_seal, config, data_path, checkpoint_dir)
        if resume:
            resume_sha256 = await asyncio.to_thread(self._carry_over, Path(resume), checkpoint_dir)
        source_dir, sandbox = "", None
        if spec.source is not None:
            source_dir, sandbox = await asyncio.to_thread(
                self._prepare_source, config, checkpoint_dir, data_path
            )
        init_from, init_sha256 = "", ""
        if spec.init_from:
            init = resolve_in_root(self.home, spec.init_from, field="init_from")
            init_sha256 = await asyncio.to_thread(self.checkpoints.verify, init, field="init_from")
            init_from = str(init)
        return RunPaths(
            checkpoint_dir,
            log_dir,
            data_path,
            resume,
            resume_sha256,
            init_from,
            init_sha256,
            source_dir,
            sandbox,
        )

    def _prepare_source(
        self, config: TrainingJobConfig, checkpoint_dir: Path, data: Path
    ) -> tuple[str, Sandbox]:
        """The spec's commit exported beside the checkpoints, read-only, and the sandbox
        its trainer enters: a folder of its own, write access to it and the checkpoints,
        and the sealed test folders closed to it."""
        spec = config.experiment_spec
        assert spec.source is not None
        attempt = checkpoint_dir.parent
        source = attempt / "source"
        if not source.exists():
            code_sources.export(self.home, self.settings.repositories, spec.source, source)
        work = attempt / "work"
        # What the trainer writes: its own folder, checkpoints, the evaluation's figures.
        writable = (work, checkpoint_dir, attempt / "evaluation")
        for folder in writable:
            folder.mkdir(parents=True, exist_ok=True)
        uid = gid = -1
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(self.settings.sandbox_user)
            except KeyError:
                raise InvalidArgumentError(
                    f"sandbox_user {self.settings.sandbox_user!r} is no user of this machine",
                    field="sandbox_user",
                ) from None
            uid, gid = user.pw_uid, user.pw_gid
            for needed in (Path(sysconfig.get_paths()["stdlib"]), REPO_ROOT, data, source):
                _check_reachable(needed, uid, gid, self.settings.sandbox_user)
            for folder in writable:
                os.chown(folder, uid, gid)
                for entry in folder.iterdir():
                    os.chown(entry, uid, gid)
            self.seals.close_to_others(self.seals.roots(config.sealed_test_datasets))
        sandbox = Sandbox(
            uid=uid,
            gid=gid,
            home=str(work),
            open_files=self.settings.sandbox_open_files,
            processes=self.settings.sandbox_processes,
            address_space_mb=self.settings.sandbox_address_space_mb,
        )
        return str(source), sandbox

    def _check_seal(self, config: TrainingJobConfig, data: Path, checkpoint_dir: Path) -> None:
        """An agent's job reads no sealed test folder but through its own test pass of a
        sealed dataset, named as sealed; a sealed run's folder carries its seal."""
        spec = config.experiment_spec
        roots = self.seals.roots(config.sealed_test_datasets)
        shown = spec.dataset.data_path
        self.seals.check_read(data, roots, field="dataset.data_path", shown=shown, training=True)
        if data in roots and not spec.seal_test:
            raise PermissionDeniedError(
                f"dataset.data_path {shown!r} is a sealed dataset under another name (through "
                "a symlink?): name it by its sealed path, so that its test figures are sealed",
                field="dataset.data_path",
            )
        if spec.seal_test:
            self.checkpoints.seal(checkpoint_dir, data)

    async def _checkout_revision(self, data_path: str, revision: str) -> Path:
        """``datasets/<id>`` at the DVC revision the spec names: a read-only copy per
        revision (``dvcsync.materialize``), never a checkout into the shared folder."""
        from services.executor.tools import dvcsync

        parts = data_path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "datasets":
            raise InvalidArgumentError(
                "dataset.dvc_revision needs dataset.data_path of the form datasets/<id>",
                field="dataset.dvc_revision",
            )
        remote = self.settings.dvc_remote or str(self.home / "dvc-remote")
        await asyncio.to_thread(dvcsync.ensure_repo, self.home, remote)
        return await asyncio.to_thread(dvcsync.materialize, self.home, parts[1], revision)

    def _carry_over(self, resume: Path, checkpoint_dir: Path) -> str:
        """The registered digest of the checkpoint a retry resumes from ("" when it is
        torn or was never registered: the trainer then starts afresh). The best checkpoint
        so far travels with the run: copied into the new folder and registered there."""
        try:
            digest = self.checkpoints.verify(resume, field="config.resume_from")
        except ArcError as exc:
            logger.warning("not resuming from %s: %s", resume, exc)
            return ""
        best = resume.with_name("best.pt")
        try:
            best_digest = self.checkpoints.verify(best, field="config.resume_from")
        except ArcError:
            return digest
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for suffix in ("", CHECKSUM_SUFFIX, META_SUFFIX):
            source = best.with_name(best.name + suffix)
            if source.exists():
                tmp = checkpoint_dir / f".{source.name}.tmp"
                shutil.copyfile(source, tmp)
                tmp.replace(checkpoint_dir / source.name)
        copied = checkpoint_dir / best.name
        if file_sha256(copied) == best_digest:
            self.checkpoints.register(copied, best_digest)
        return digest

    async def completed(self, config: TrainingJobConfig) -> None:
        """The job's earlier attempts' checkpoints go: this one carried the best over."""
        folder = resolve_in_root(self.home, config.checkpoint_dir, field="checkpoint_dir")
        freed = await asyncio.to_thread(retention.drop_earlier_attempts, self.home, folder)
        if freed:
            logger.info(
                "job %s: %.1f MB of earlier attempts' checkpoints deleted",
                config.job_id,
                freed / 1e6,
            )

    def trainer_input(self, run: Run, paths: RunPaths, *, prepared: bool) -> TrainerInput:
        """What the run's trainer is told: its config, folders, data and resume point."""
        assert run.config is not None
        workers = self.settings.dataloader_workers
        return TrainerInput(
            run_id=run.run_id,
            config=run.config,
            workspace=str(self.home),
            data_path=str(paths.data_path),
            checkpoint_dir=str(paths.checkpoint_dir),
            log_dir=str(paths.log_dir),
            workers=workers if workers >= 0 else 0,
            log_every_steps=self.settings.log_every_steps,
            resume_from=paths.resume,
            resume_sha256=paths.resume_sha256,
            inject=self.settings.trainer_faults,
            standby=prepared,
            init_from=paths.init_from,
            init_sha256=paths.init_sha256,
            source_dir=paths.source_dir,
            sandbox=paths.sandbox,
        )
