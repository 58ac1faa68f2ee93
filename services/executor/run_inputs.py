"""What a run reads and writes, checked before its trainer starts: its folders inside the
workspace, its dataset (at the DVC revision its spec names), and the checkpoint a retry
resumes from; then the ``TrainerInput`` that tells its trainer."""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from arc_common.errors import ArcError, InvalidArgumentError, PermissionDeniedError
from arc_common.models import Run, TrainingJobConfig
from arc_common.paths import resolve_data, resolve_in_root
from services.executor.protocol import CHECKSUM_SUFFIX, META_SUFFIX, TrainerInput, file_sha256
from services.executor.registry import CheckpointRegistry
from services.executor.sealed import SealGuard
from services.executor.settings import ExecutorSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPaths:
    checkpoint_dir: Path
    log_dir: Path
    data_path: Path
    resume: str  # "" when starting afresh
    resume_sha256: str = ""  # its registered digest ("" when unregistered: not loaded)


class RunInputs:
    def __init__(self, settings: ExecutorSettings, checkpoints: CheckpointRegistry) -> None:
        self.settings = settings
        self.home = settings.home.resolve()
        self.checkpoints = checkpoints
        self.seals = SealGuard(self.home, settings.data_root, checkpoints)

    async def check(self, config: TrainingJobConfig) -> RunPaths:
        """The run's paths, each inside the workspace (INVALID_ARGUMENT naming the field
        otherwise); its checkpoint folder claimed for its submitter."""
        spec = config.experiment_spec
        checkpoint_dir = resolve_in_root(self.home, config.checkpoint_dir, field="checkpoint_dir")
        log_dir = resolve_in_root(self.home, config.log_dir, field="log_dir")
        await asyncio.to_thread(self.checkpoints.claim, checkpoint_dir, config.submitted_by)
        if spec.dataset.dvc_revision:
            await self._checkout_revision(spec.dataset.data_path, spec.dataset.dvc_revision)
        data_path = resolve_data(
            self.home, self.settings.data_root, spec.dataset.data_path, field="dataset.data_path"
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
        return RunPaths(checkpoint_dir, log_dir, data_path, resume, resume_sha256)

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

    async def _checkout_revision(self, data_path: str, revision: str) -> None:
        """Bring ``datasets/<id>`` to the DVC revision the spec names, before training."""
        from services.executor.tools import dvcsync

        parts = data_path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "datasets":
            raise InvalidArgumentError(
                "dataset.dvc_revision needs dataset.data_path of the form datasets/<id>",
                field="dataset.dvc_revision",
            )
        remote = self.settings.dvc_remote or str(self.home / "dvc-remote")
        await asyncio.to_thread(dvcsync.ensure_repo, self.home, remote)
        await asyncio.to_thread(dvcsync.pull, self.home, parts[1], revision)

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
        )
