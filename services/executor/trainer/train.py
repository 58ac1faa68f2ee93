"""The training loop that runs inside a job's child process (the only code importing torch
for training). Reports through a ``Reporter``; raises ``Pruned`` when the run must stop
early for a reason that is not a failure."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from arc_common import evaluation
from arc_common.models import (
    CheckpointInfo,
    CheckpointKind,
    ExperimentResult,
    JobState,
    MetricMode,
)
from services.executor.protocol import META_SUFFIX, TrainerInput
from services.executor.trainer.checkpoint_io import (
    CHECKPOINT_FORMAT,
    CheckpointWriter,
    Serialized,
    host_copy,
    load_verified,
    serialize_checkpoint,
    slim_best,
    write_checkpoint,
)
from services.executor.trainer.code import build as build_code_model
from services.executor.trainer.code import call as call_code
from services.executor.trainer.code import load as load_code
from services.executor.trainer.data import load_splits, loader
from services.executor.trainer.models import build_model, load_init
from services.executor.trainer.optim import make_optimizer, make_scheduler, seed_everything
from services.executor.trainer.provenance import provenance
from services.executor.trainer.scoring import evaluate_best as _evaluate
from services.executor.trainer.scoring import figures as _figures


class Pruned(Exception):
    """The run stops early on purpose (divergence); not a crash."""


Criterion = Callable[[torch.Tensor, torch.Tensor], Any]


class MetricSink(Protocol):
    def __call__(self, name: str, value: float, *, step: int, epoch: int, split: str) -> None: ...


@dataclass
class Reporter:
    metric: MetricSink
    checkpoint: Callable[[CheckpointInfo], None]
    state: Callable[[str, str], None]
    # Said once the run no longer needs its GPUs (only its last checkpoint write is left).
    release: Callable[[], None] = field(default=lambda: None)
    # A prepared run's wait for its GPUs: their indices (raises when none will come).
    await_devices: Callable[[], list[int]] = field(default=lambda: [])


@torch.inference_mode()
def predict(
    model: nn.Module, data: Any, device: torch.device, *, amp: bool, channels_last: bool
) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, probabilities, mean loss) over a loader."""
    model.eval()
    labels: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    total_loss = 0.0
    count = 0
    criterion = nn.CrossEntropyLoss(reduction="sum")
    for images, targets in data:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
        logits = logits.float()
        total_loss += float(criterion(logits, targets))
        count += len(targets)
        probs.append(torch.softmax(logits, dim=1).cpu().numpy())
        labels.append(targets.cpu().numpy())
    if not count:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 2)), float("nan")
    return np.concatenate(labels), np.concatenate(probs), total_loss / count


def _improved(value: float, best: float, mode: MetricMode, min_delta: float) -> bool:
    if math.isnan(value):
        return False
    return value > best + min_delta if mode is MetricMode.MAX else value < best - min_delta


def train(
    inp: TrainerInput, report: Reporter, *, criterion: Criterion | None = None
) -> ExperimentResult:
    """One run; ``criterion`` is the training loss (cross-entropy unless given)."""
    with CheckpointWriter() as writer:
        return _train(inp, report, writer, criterion or nn.CrossEntropyLoss())


def _train(
    inp: TrainerInput, report: Reporter, writer: CheckpointWriter, criterion: Criterion
) -> ExperimentResult:
    config = inp.config
    spec = config.experiment_spec
    seed = spec.hyperparameters.seed if spec.hyperparameters.seed is not None else 42
    seed_everything(seed)
    # What needs no GPU comes first: a prepared run (``inp.standby``) does it ahead of its
    # GPUs, and nothing here may touch CUDA (CUDA_VISIBLE_DEVICES is not set yet).
    code = load_code(inp.source_dir, spec.source, inp.workspace) if spec.source else None
    transforms = None
    if code is not None and code.transforms is not None:
        make = code.transforms

        def transforms(*, train: bool, size: int) -> Any:
            return call_code(make, train=train, size=size)

    splits = load_splits(spec, Path(inp.data_path), seed, transforms)
    positive = evaluation.positive_index(splits.class_names)
    if code is not None:  # in host memory
        model = build_code_model(code, spec.architecture, spec.dataset.image_size)
        if code.loss is not None:
            criterion = call_code(code.loss, **spec.architecture.model_dump())
    else:
        model = build_model(spec.architecture)
    if inp.init_from and not inp.resume_from:  # a fine-tune; a retry resumes instead
        load_init(model, inp.init_from, inp.init_sha256)
    if inp.standby:
        report.state(JobState.QUEUED.value, "prepared: data opened, model built; waiting for GPUs")
        gpus = report.await_devices()
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(index) for index in gpus)
    deterministic = spec.hyperparameters.deterministic
    if deterministic:  # read when cuBLAS makes its first handle: before any CUDA work
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda or deterministic:
        # Ops without a deterministic kernel warn (into the run's log) rather than fail.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    amp = cuda
    channels_last = cuda
    started = time.monotonic()

    batch = spec.hyperparameters.batch_size
    # Evaluation keeps no activations for a backward pass, so twice the training batch
    # needs less memory than training does, and fuller batches evaluate faster: the last
    # validation and the test split are what the next job on the GPU waits for.
    eval_batch = 2 * batch
    workers = inp.workers
    train_loader = loader(
        splits.train, batch_size=batch, shuffle=True, seed=seed, workers=workers, cuda=cuda
    )
    val_loader = loader(
        splits.val, batch_size=eval_batch, shuffle=False, seed=seed, workers=workers, cuda=cuda
    )
    test_loader = loader(
        splits.test, batch_size=eval_batch, shuffle=False, seed=seed, workers=workers, cuda=cuda
    )

    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    groups = call_code(code.param_groups, model=model) if code and code.param_groups else None
    optimizer = make_optimizer(model, spec, groups)
    scheduler = make_scheduler(optimizer, spec)
    early = spec.early_stopping
    monitor = early.monitor
    checkpoint_dir = Path(inp.checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)

    where = f"training on {device.type}" + (f" ({torch.cuda.get_device_name(0)})" if cuda else "")
    best_value: float | None = None
    best_epoch = 0
    best_metrics: dict[str, float] = {}
    epochs_without_improvement = 0
    first_loss: float | None = None
    step = 0
    checkpoints: list[CheckpointInfo] = []

    def snapshot(epoch: int, epoch_metrics: dict[str, float]) -> dict[str, Any]:
        """The checkpoint's payload, every tensor copied to host memory (a memory copy, a
        fraction of serializing it): the writer thread serializes it while the next epoch
        changes the weights, or after the GPUs are given back."""
        payload: dict[str, Any] = host_copy(
            {
                "format": CHECKPOINT_FORMAT,
                "model_state_dict": dict(model.state_dict()),
                "architecture": spec.architecture.model_dump(mode="json"),
                "source": spec.source.model_dump(mode="json") if spec.source else None,
                "epoch": epoch,
                "metrics": epoch_metrics,
                "class_names": splits.class_names,
                "image_size": spec.dataset.image_size,
                "preprocessing": spec.preprocessing.model_dump(mode="json"),
                # How an unsplit folder was split, so a tool reads the same held-out images.
                "dataset": spec.dataset.model_dump(mode="json"),
                "seed": seed,
                "experiment_id": spec.experiment_id,
                "job_id": config.job_id,
                # What a retried attempt needs to go on where this one stopped.
                "optimizer_state_dict": optimizer.state_dict(),
                "scheduler_state_dict": scheduler.state_dict() if scheduler else None,
                "progress": {
                    "step": step,
                    "first_loss": first_loss,
                    "best_value": best_value,
                    "best_epoch": best_epoch,
                    "best_metrics": best_metrics,
                    "epochs_without_improvement": epochs_without_improvement,
                },
            }
        )
        return payload

    def persist(
        epoch: int, epoch_metrics: dict[str, float], payload: dict[str, Any], best: bool
    ) -> None:
        """On the writer thread: serialized and hashed once; when this epoch is also the
        best, best.pt is a second name for the same bytes."""
        serialized = serialize_checkpoint(payload)
        last = write(CheckpointKind.LAST, epoch, epoch_metrics, serialized)
        if best:
            write(CheckpointKind.BEST, epoch, epoch_metrics, serialized, same_as=last)

    def write(
        kind: CheckpointKind,
        epoch: int,
        epoch_metrics: dict[str, float],
        serialized: Serialized,
        same_as: Path | None = None,
    ) -> Path:
        path = checkpoint_dir / f"{kind.value}.pt"
        digest = serialized.digest
        write_checkpoint(path, serialized.data, digest, same_as=same_as)
        info = CheckpointInfo(
            path=str(path.relative_to(inp.workspace)),
            epoch=epoch,
            size_bytes=path.stat().st_size,
            create_time=datetime.now(UTC),
            metrics=epoch_metrics,
            kind=kind,
            sha256=digest,
        )
        # Metadata beside the weights, so listing checkpoints needs no torch.
        meta = path.with_name(path.name + META_SUFFIX)
        meta_tmp = meta.with_name(f".{meta.name}.tmp")
        meta_tmp.write_text(info.model_dump_json())
        meta_tmp.replace(meta)
        report.checkpoint(info)
        checkpoints[:] = [c for c in checkpoints if c.kind is not kind] + [info]
        return path

    start_epoch = 1
    last_epoch = 0
    final: tuple[int, dict[str, float], dict[str, Any], bool] | None = None
    resume = Path(inp.resume_from) if inp.resume_from else None
    if resume is not None:
        payload = load_verified(resume, inp.resume_sha256, map_location=device)
        if payload is not None:
            model.load_state_dict(payload["model_state_dict"])
            if payload.get("optimizer_state_dict"):
                optimizer.load_state_dict(payload["optimizer_state_dict"])
            if scheduler is not None and payload.get("scheduler_state_dict"):
                scheduler.load_state_dict(payload["scheduler_state_dict"])
            progress = payload.get("progress") or {}
            step = int(progress.get("step", 0))
            first_loss = progress.get("first_loss")
            best_value = progress.get("best_value")
            best_epoch = int(progress.get("best_epoch", 0))
            best_metrics = dict(progress.get("best_metrics") or {})
            epochs_without_improvement = int(progress.get("epochs_without_improvement", 0))
            start_epoch = int(payload["epoch"]) + 1
            # The best so far was carried into this run's folder by the executor.
            where += f"; resumed from epoch {payload['epoch']} of {resume.name}"
        else:
            where += f"; {resume} is torn or unverified, so starting from scratch"
    report.state("running", where)

    for epoch in range(start_epoch, spec.hyperparameters.epochs + 1):
        model.train()
        epoch_loss = 0.0
        seen = 0
        epoch_start = time.monotonic()
        for images, targets in train_loader:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = targets.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = criterion(model(images), targets)
            step += 1
            value = float(loss.detach())
            if first_loss is None and math.isfinite(value):
                first_loss = value
            if not math.isfinite(value):
                raise Pruned(f"divergence: loss is {value} at step {step} (epoch {epoch})")
            if first_loss is not None and value > early.divergence_factor * first_loss:
                raise Pruned(
                    f"divergence: loss {value:.4g} at step {step} is above "
                    f"{early.divergence_factor:g} x its first value {first_loss:.4g}"
                )
            loss.backward()
            optimizer.step()
            epoch_loss += value * len(targets)
            seen += len(targets)
            if step % max(1, inp.log_every_steps) == 0:
                report.metric("train_step_loss", value, step=step, epoch=epoch, split="train")
        elapsed = max(time.monotonic() - epoch_start, 1e-9)
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        labels, probs, val_loss = predict(
            model, val_loader, device, amp=amp, channels_last=channels_last
        )
        # Per epoch only what ranks epochs; operating points are chosen once, on the best.
        epoch_metrics = {
            "train_loss": epoch_loss / max(seen, 1),
            "val_loss": val_loss,
            "val_accuracy": float(np.mean(probs.argmax(1) == labels)) if len(labels) else math.nan,
            "val_auc": evaluation.auc(labels, probs, positive) if len(labels) else math.nan,
            "lr": lr,
            "images_per_second": seen / elapsed,
        }
        for name, value in epoch_metrics.items():
            split = name.split("_", 1)[0] if name.startswith(("train", "val")) else "train"
            report.metric(name, value, step=step, epoch=epoch, split=split)
        current = epoch_metrics.get(monitor, float("nan"))
        improved = (
            best_value is None
            or math.isnan(best_value)
            or _improved(current, best_value, early.mode, early.min_delta)
        )
        if improved:
            best_value = current
            best_epoch = epoch
            best_metrics = dict(epoch_metrics)
            epochs_without_improvement = 0
        else:
            epochs_without_improvement += 1
        # Copied to host memory here, serialized and written while the next epoch trains;
        # at most one epoch in flight. The final epoch's is written once the test split is
        # done and the GPUs are given back (serializing takes the CPU the test split needs).
        stop = not improved and early.enabled and epochs_without_improvement >= early.patience
        writer.settle()
        final = (epoch, epoch_metrics, snapshot(epoch, epoch_metrics), improved)
        if not stop and epoch < spec.hyperparameters.epochs:
            writer.submit(persist, *final)
            final = None
        last_epoch = epoch
        if stop:
            report.state(
                "running",
                f"early stopping: {monitor} did not improve for {early.patience} epochs "
                f"(best {best_value:.4f} at epoch {best_epoch})",
            )
            break

    # best.pt of an earlier epoch is on disk already (settled by a later epoch's writes).
    try:
        if best_epoch != last_epoch:  # the model in memory is the best one otherwise
            best = torch.load(checkpoint_dir / "best.pt", map_location=device, weights_only=True)
            model.load_state_dict(best["model_state_dict"])
        # fp32 for both, as the evaluation tool scores a checkpoint: one model, one score.
        val_labels, val_probs, _ = predict(
            model, val_loader, device, amp=False, channels_last=channels_last
        )
        labels, probs, test_loss = predict(
            model, test_loader, device, amp=False, channels_last=channels_last
        )
        evaluations = _evaluate(
            (val_labels, val_probs, splits.val.groups),
            (labels, probs, splits.test.groups),
            splits.class_names,
            seed=seed,
        )
        test_metrics = {"test_loss": test_loss} | evaluation.flat_metrics(evaluations[-1])
        for name, value in test_metrics.items():
            report.metric(name, value, step=step, epoch=best_epoch, split="test")
        best_metrics.update(test_metrics)
        if evaluations[0].split == "val":
            best_metrics.update(evaluation.flat_metrics(evaluations[0]))
        best_metrics["best_epoch"] = float(best_epoch)
        # Done with the GPUs: the last checkpoint is in host memory and only its write is left.
        # Give them back now, so the next job starts while this one writes.
        if cuda:
            model.to("cpu")
            optimizer.state.clear()  # no step comes any more; the snapshot holds its copy
            torch.cuda.empty_cache()
        report.release()
    finally:  # the last epoch's checkpoint is written even when the test split fails
        if final is not None:
            writer.submit(persist, *final)
    writer.settle()  # the last checkpoints are on disk before the result says so
    if best_epoch != last_epoch:
        slim_best(checkpoint_dir, write)
    # Drawn after the GPUs went back: CPU work only.
    evaluations = _figures(
        evaluations,
        {"val": (val_labels, val_probs), "test": (labels, probs)},
        splits.class_names,
        folder=Path(inp.checkpoint_dir).parent / "evaluation",
        workspace=Path(inp.workspace),
    )
    return ExperimentResult(
        experiment_id=spec.experiment_id,
        job_id=config.job_id,
        state=JobState.COMPLETED,
        metrics=[],  # the stream carries them; the executor assembles the full list
        best_metrics=best_metrics,
        checkpoints=checkpoints,
        duration_seconds=time.monotonic() - started,
        evaluations=evaluations,
        provenance=provenance(
            spec,
            seed=seed,
            device=f"cuda ({torch.cuda.get_device_name(0)})" if cuda else "cpu",
            precision="bf16" if amp else "fp32",
            data_path=Path(inp.data_path),
            images=[p for part in (splits.train, splits.val, splits.test) for p in part.paths()],
            checkpoint=next((c for c in checkpoints if c.kind is CheckpointKind.BEST), None),
            parameter_count=sum(p.numel() for p in model.parameters()),
        ),
        kind="training",
        selected_by=monitor,
        selected_mode=early.mode,
    )
