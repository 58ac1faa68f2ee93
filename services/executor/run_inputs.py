"""What a run reads and writes, checked before its trainer starts: its folders inside the
workspace, its dataset (at the DVC revision its spec names), and the checkpoint a retry
resumes from; then the ``TrainerInput`` that tells its trainer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pwd
import sysconfig
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from arc_common.errors import ArcError, InvalidArgumentError, PermissionDeniedError
from arc_common.models import Run, TrainingJobConfig
from arc_common.paths import check_relative_path, resolve_data, resolve_in_root
from arc_common.untrusted import chown_tree_no_follow, copy_no_follow
from services.executor import code_sources, retention
from services.executor.protocol import (
    CHECKSUM_SUFFIX,
    META_SUFFIX,
    Sandbox,
    TrainerInput,
)
from services.executor.registry import CheckpointRegistry
from services.executor.sandbox_users import SandboxUsers, hand_back, parse_range
from services.executor.sealed import SealGuard
from services.executor.settings import ExecutorSettings

logger = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]


def _check_reachable(path: Path, uid: int, gid: int, user: str, field: str) -> None:
    """Every folder down to ``path`` must let the sandbox user through (execute bit)."""
    for folder in [*reversed(path.resolve().parents), path.resolve()]:
        info = folder.stat()
        bit = 0o100 if info.st_uid == uid else 0o010 if info.st_gid == gid else 0o001
        if not info.st_mode & bit:
            # Not FAILED_PRECONDITION: the scheduler takes that for a stale lease and
            # would place the job again and again.
            raise PermissionDeniedError(
                f"{field} {user} cannot reach {path}: {folder} is mode "
                f"{info.st_mode & 0o777:o}; let others through (chmod o+x {folder}), or "
                "change ARC_EXECUTOR_SANDBOX_UIDS / _USER (docs/security.md)",
                field=field,
            )


def _writable(checkpoint_dir: Path) -> tuple[Path, ...]:
    """What a sandboxed trainer writes: its own folder, checkpoints, the figures."""
    attempt = checkpoint_dir.parent
    return (attempt / "work", checkpoint_dir, attempt / "evaluation")


def _close_job_folder(job: Path) -> None:
    os.chown(job, -1, os.getegid())
    job.chmod(0o700)


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
        self.users = SandboxUsers(parse_range(settings.sandbox_uids))

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
            resume = self._resume_point(config.resume_from, checkpoint_dir)
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
                self._prepare_source, config, checkpoint_dir
            )
        paths = RunPaths(
            checkpoint_dir, log_dir, data_path, resume, resume_sha256, "", "", source_dir, sandbox
        )
        if spec.init_from:
            init = resolve_in_root(self.home, spec.init_from, field="init_from")
            digest = await asyncio.to_thread(self.checkpoints.verify, init, field="init_from")
            paths = dataclasses.replace(paths, init_from=str(init), init_sha256=digest)
        return paths

    def _resume_point(self, relative: str, checkpoint_dir: Path) -> str:
        """The checkpoint a retry resumes from, when it is a file of this job's own folders
        reached through no link ("" otherwise: it starts afresh). The earlier attempt's
        trainer could write there: a link it left could lead to another job's checkpoint."""
        candidate = resolve_in_root(self.home, relative, field="config.resume_from")
        lexical = self.home / check_relative_path(relative)
        if candidate != lexical or not candidate.is_relative_to(checkpoint_dir.parent.parent):
            logger.warning("not resuming from %s: not a file of its job's folder", relative)
            return ""
        return str(candidate) if candidate.is_file() else ""

    async def admit(self, config: TrainingJobConfig, paths: RunPaths) -> RunPaths:
        """As root, the sandbox of a code run gets its uid and its folders: called once no
        other run of the job is live (they are the same folders). Release it after."""
        if paths.sandbox is None or os.geteuid() != 0:
            return paths
        return await asyncio.to_thread(self._admit, paths, paths.sandbox)

    def _admit(self, paths: RunPaths, box: Sandbox) -> RunPaths:
        uid, gid, user, field = self._sandbox_user()
        writable = _writable(paths.checkpoint_dir)
        try:
            job = paths.checkpoint_dir.parent.parent
            if self.checkpoints.sealed_data(job) is not None:  # 0700: let this run in
                os.chown(job, -1, gid)
                job.chmod(0o710)
            stdlib = Path(sysconfig.get_paths()["stdlib"])
            for needed in (stdlib, REPO_ROOT, paths.data_path, Path(paths.source_dir)):
                _check_reachable(needed, uid, gid, user, field)
            for folder in writable:
                chown_tree_no_follow(folder, uid, gid)
        except BaseException:
            self.users.release(uid, writable)
            raise
        return dataclasses.replace(paths, sandbox=box.model_copy(update={"uid": uid, "gid": gid}))

    def _prepare_source(
        self, config: TrainingJobConfig, checkpoint_dir: Path
    ) -> tuple[str, Sandbox]:
        """The spec's commit exported beside the checkpoints, read-only, and the sandbox
        its trainer enters: a folder of its own, write access to it and the checkpoints."""
        spec = config.experiment_spec
        assert spec.source is not None
        attempt = checkpoint_dir.parent
        source = attempt / "source"
        if not source.exists():
            code_sources.export(self.home, self.settings.repositories, spec.source, source)
        for folder in _writable(checkpoint_dir):
            folder.mkdir(parents=True, exist_ok=True)
        sandbox = Sandbox(  # its uid comes with ``admit``
            home=str(attempt / "work"),
            open_files=self.settings.sandbox_open_files,
            processes=self.settings.sandbox_processes,
            address_space_mb=self.settings.sandbox_address_space_mb,
        )
        return str(source), sandbox

    def _sandbox_user(self) -> tuple[int, int, str, str]:
        """The uid and gid a sandboxed trainer becomes, how to name it, and its setting."""
        if self.users.uids:
            uid = self.users.allocate()
            return uid, uid, f"uid {uid}", "sandbox_uids"
        try:
            user = pwd.getpwnam(self.settings.sandbox_user)
        except KeyError:
            raise InvalidArgumentError(
                f"sandbox_user {self.settings.sandbox_user!r} is no user of this machine",
                field="sandbox_user",
            ) from None
        return user.pw_uid, user.pw_gid, repr(self.settings.sandbox_user), "sandbox_user"

    async def release(self, paths: RunPaths) -> None:
        """The run of ``paths`` is over (or never started): its sandbox's processes are
        killed and its folders handed back, and its uid may serve another run."""
        box = paths.sandbox
        if box is not None and box.uid >= 0:
            attempt = paths.checkpoint_dir.parent
            await asyncio.to_thread(self.users.release, box.uid, _writable(paths.checkpoint_dir))
            if self.checkpoints.sealed_data(attempt) is not None:
                await asyncio.to_thread(_close_job_folder, attempt.parent)

    @contextlib.asynccontextmanager
    async def released_on_error(self, paths: RunPaths) -> AsyncIterator[None]:
        """Release the sandbox of ``paths`` if the block fails: no run will."""
        try:
            yield
        except BaseException:
            await self.release(paths)
            raise

    async def sweep(self, configs: list[TrainingJobConfig]) -> None:
        """At start: no process of an earlier executor's sandboxes is left, and the folders
        of its runs (``configs``) are the executor's again."""
        if os.geteuid() != 0 or not self.users.uids:
            return
        dvc = self.home / ".dvc"  # every revision, sealed test images too: the executor's
        if dvc.is_dir() and not dvc.is_symlink():
            dvc.chmod(0o700)
        killed = await asyncio.to_thread(self.users.sweep)
        if killed:
            logger.warning("killed the processes of %d sandbox uids left running", killed)
        for config in configs:
            if config.experiment_spec.source is not None:
                with contextlib.suppress(ArcError, OSError):
                    folder = resolve_in_root(self.home, config.checkpoint_dir, field="path")
                    await asyncio.to_thread(hand_back, _writable(folder))

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
        if os.geteuid() == 0:  # closed before any run, so a copy made meanwhile is too
            self.seals.close_to_others(roots)

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
        # The earlier attempt's folder was a sandboxed trainer's: what it left there is
        # read as regular files only, never through a link, and verified as copied.
        copied = ""
        try:
            for suffix in (META_SUFFIX, CHECKSUM_SUFFIX, ""):
                source = best.with_name(best.name + suffix)
                if suffix and not source.exists():
                    continue
                copied = copy_no_follow(source, checkpoint_dir / source.name)
        except OSError as exc:
            logger.warning("not carrying %s over: %s", best, exc)
            return digest
        if copied == best_digest:
            self.checkpoints.register(checkpoint_dir / best.name, best_digest)
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
