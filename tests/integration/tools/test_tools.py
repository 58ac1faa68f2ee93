"""Each research tool through real servers, governed end to end."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio
from PIL import Image
from sklearn import metrics as skm

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2
from arc.governance.v1 import governance_pb2
from arc_common.auth import Role
from arc_common.convert import dict_to_proto
from tests.integration.tools.conftest import SIZE, Tools, git

CHECKPOINT = "runs/r1/checkpoints/best.pt"
# What the services change by themselves on every call (audit, its anchor, databases).
SERVICES_OWN = ("governance", "executor.sqlite3", "gpu_manager", ".secrets/audit")


def tree_digest(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_file() and not path.is_symlink() and not rel.startswith(skip):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def chain(*steps: dict[str, object]) -> common_pb2.PreprocessingChain:
    return dict_to_proto({"chain_id": "c1", "steps": list(steps)}, common_pb2.PreprocessingChain)


async def test_preprocess_manifest_corrupt_images_and_reuse(tools: Tools) -> None:
    source = tools.home / "datasets" / "raw"
    shutil.copytree(tools.home / "datasets" / "fundus" / "train", source)
    (source / "normal" / "broken.png").write_bytes(b"not a png at all")
    request = executor_pb2.PreprocessDatasetRequest(
        request_id="pp-1",
        dataset_id="raw-clahe",
        input_path="datasets/raw",
        output_path="datasets/raw-clahe",
        chain=chain(
            {"type": "resize", "params": {"size": 32}},
            {"type": "clahe"},
            {"type": "green_channel"},
            {"type": "horizontal_flip"},
        ),
    )
    reply = await tools.executor().PreprocessDataset(request)
    manifest = reply.manifest
    assert not reply.reused
    assert dict(manifest.images_per_class) == {"glaucoma": 12, "normal": 12}
    assert (manifest.image_width, manifest.image_height) == (32, 32)
    assert [f for f in reply.failed_images if "broken.png" in f]
    out = tools.home / "datasets" / "raw-clahe"
    for rel, digest in manifest.checksums.items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    image = np.asarray(Image.open(out / next(iter(manifest.checksums))))
    assert (image[..., 0] == image[..., 1]).all()  # green channel copied to all three
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["chain_hash"] == manifest.chain_hash
    assert on_disk["skipped_augmentations"] == ["horizontal_flip"]
    retried = await tools.executor().PreprocessDataset(request)
    assert retried == reply  # the same request id: the first answer, not a second run
    request.request_id = "pp-2"
    again = await tools.executor().PreprocessDataset(request)
    assert again.reused and again.manifest.chain_hash == manifest.chain_hash


async def test_denied_call_changes_nothing_and_is_audited(tools: Tools) -> None:
    before = tree_digest(tools.home, skip=SERVICES_OWN)
    with pytest.raises(aio.AioRpcError) as info:
        await tools.executor().PreprocessDataset(
            executor_pb2.PreprocessDatasetRequest(
                dataset_id="x", input_path="runs/r1", output_path="elsewhere/out", chain=chain()
            )
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "output_path" in (info.value.details() or "")
    assert not (tools.home / "elsewhere").exists()
    after = tree_digest(tools.home, skip=SERVICES_OWN)
    assert after == before
    records = await tools.governance().ListAuditRecords(
        governance_pb2.ListAuditRecordsRequest(decision=governance_pb2.DECISION_OUTCOME_DENIED)
    )
    assert [r.tool for r in records.records] == [governance_pb2.TOOL_PREPROCESS_DATASET]
    assert records.records[0].caller == "agent"


async def test_evaluation_agrees_with_sklearn(tools: Tools) -> None:
    reply = await tools.executor().EvaluateCheckpoint(
        executor_pb2.EvaluateCheckpointRequest(
            checkpoint_path=CHECKPOINT,
            data_path="datasets/fundus",
            split="test",
            bootstrap_samples=200,
            seed=1,
        )
    )
    report = reply.report
    stored = json.loads((tools.home / reply.report_path).read_text())
    assert stored["positive_class"] == "glaucoma"
    positive = stored["class_names"].index("glaucoma")
    labels = (np.array(stored["labels"]) == positive).astype(int)
    scores = np.array(stored["scores"])
    assert report.num_samples == len(labels) == 12
    assert report.auc == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-9)
    # Sensitivity and specificity are read at the Youden threshold chosen on validation.
    youden = next(p for p in report.evaluation.operating_points if p.name == "youden")
    assert {p.chosen_on for p in report.evaluation.operating_points} == {"val"}
    predictions = (scores >= youden.threshold).astype(int)
    assert report.sensitivity == pytest.approx(skm.recall_score(labels, predictions))
    assert report.specificity == pytest.approx(
        skm.recall_score(1 - labels, 1 - predictions, zero_division=0)
    )
    assert report.f1 == pytest.approx(skm.f1_score(labels, predictions, zero_division=0))
    assert youden.true_positives + youden.false_negatives == labels.sum()
    # Rows are true classes in folder order; the diagonal holds the argmax's correct ones.
    matrix = np.array(report.confusion_matrix).reshape(2, 2)
    assert matrix.sum() == len(labels)
    assert np.trace(matrix) == round(report.accuracy * len(labels))
    assert report.auc_ci_lower <= report.auc <= report.auc_ci_upper
    assert report.evaluation.bootstrap_samples == 200
    assert report.roc_curve[0].false_positive_rate == 0
    assert report.roc_curve[-1].true_positive_rate == 1
    assert 0 <= report.sensitivity_at_95_specificity <= 1
    assert report.provenance.dataset_id == "fundus"
    assert report.provenance.checkpoint_path == CHECKPOINT
    assert report.provenance.dataset_hash.startswith("sha256:")
    # The ROC curve and the reliability diagram beside the report, inside the workspace.
    figures = [report.evaluation.roc_curve_png, report.evaluation.reliability_diagram_png]
    assert [Path(f).suffix for f in figures] == [".png", ".png"]
    for figure in figures:
        assert (tools.home / figure).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def _flatten(home: Path) -> Path:
    """datasets/flat: the fundus images without split folders (class folders only)."""
    flat = home / "datasets" / "flat"
    for image in sorted((home / "datasets" / "fundus").glob("*/*/*.png")):
        split, label = image.parent.parent.name, image.parent.name
        (flat / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, flat / label / f"{split}-{image.name}")
    return flat


async def test_test_split_of_an_unsplit_folder_is_the_trainers_held_out_part(
    tools: Tools,
) -> None:
    from arc_common.models import ExperimentSpec
    from services.executor.trainer.data import load_splits
    from services.executor.trainer.provenance import dataset_hash

    flat = _flatten(tools.home)
    reply = await tools.executor().EvaluateCheckpoint(
        executor_pb2.EvaluateCheckpointRequest(
            checkpoint_path=CHECKPOINT, data_path="datasets/flat", split="test"
        )
    )
    spec = ExperimentSpec.model_validate(
        {
            "experiment_id": "e1",
            "architecture": {"family": "resnet", "variant": "resnet18"},
            "hyperparameters": {
                "batch_size": 8,
                "epochs": 1,
                "optimizer": {"learning_rate": 0.001},
                "seed": 1,
            },
            "dataset": {"dataset_id": "flat", "data_path": "datasets/flat", "image_size": SIZE},
        }
    )
    held_out = load_splits(spec, flat, seed=1).test.paths()
    assert reply.report.num_samples == len(held_out) < len(list(flat.rglob("*.png")))
    # The same images, not just as many: the report hashes the files it read.
    assert reply.report.provenance.dataset_hash == dataset_hash(flat, held_out)


async def test_reports_on_two_datasets_both_survive(tools: Tools) -> None:
    _flatten(tools.home)
    paths = []
    for data_path in ("datasets/fundus", "datasets/flat"):
        reply = await tools.executor().EvaluateCheckpoint(
            executor_pb2.EvaluateCheckpointRequest(
                checkpoint_path=CHECKPOINT, data_path=data_path, split="test"
            )
        )
        paths.append(reply.report_path)
    assert len(set(paths)) == 2
    reports = [json.loads((tools.home / p).read_text()) for p in paths]
    assert [r["provenance"]["dataset_id"] for r in reports] == ["fundus", "flat"]
    assert [r["provenance"]["data_path"] for r in reports] == ["datasets/fundus", "datasets/flat"]


async def test_compare_is_the_paired_delong_test_of_two_evaluations(tools: Tools) -> None:
    from arc_common.evaluation import paired_delong

    executor = tools.executor()
    last = CHECKPOINT.replace("best.pt", "last.pt")
    reports = []
    for path in (CHECKPOINT, last):
        reply = await executor.EvaluateCheckpoint(
            executor_pb2.EvaluateCheckpointRequest(
                checkpoint_path=path, data_path="datasets/fundus", split="test"
            )
        )
        reports.append(json.loads((tools.home / reply.report_path).read_text()))
    compared = await executor.CompareCheckpoints(
        executor_pb2.CompareCheckpointsRequest(
            checkpoint_path_a=CHECKPOINT,
            checkpoint_path_b=last,
            data_path="datasets/fundus",
            split="test",
        )
    )
    found = compared.comparison
    assert [found.auc_a, found.auc_b] == pytest.approx([r["auc"] for r in reports], abs=1e-9)
    positive = reports[0]["class_names"].index("glaucoma")
    labels = (np.array(reports[0]["labels"]) == positive).astype(np.int64)
    expected = paired_delong(labels, np.array(reports[0]["scores"]), np.array(reports[1]["scores"]))
    assert found.difference == pytest.approx(expected.difference, abs=1e-9)
    if not np.isnan(expected.p_value):
        assert found.p_value == pytest.approx(expected.p_value, abs=1e-9)
    assert found.num_samples == 12 and found.dataset_id == "fundus"
    assert (tools.home / compared.report_path).is_file()
    assert not found.scores_a  # per image only when asked for
    scored = await executor.CompareCheckpoints(
        executor_pb2.CompareCheckpointsRequest(
            checkpoint_path_a=CHECKPOINT,
            checkpoint_path_b=last,
            data_path="datasets/fundus",
            split="test",
            with_scores=True,
        )
    )
    pairs = scored.comparison
    assert list(pairs.labels) == labels.tolist() and len(pairs.scores_b) == 12
    again = paired_delong(labels, np.array(pairs.scores_a), np.array(pairs.scores_b))
    assert again.difference == pytest.approx(found.difference, abs=1e-9)
    # A checkpoint against itself: no difference, nothing to reject.
    same = await executor.CompareCheckpoints(
        executor_pb2.CompareCheckpointsRequest(
            checkpoint_path_a=CHECKPOINT, checkpoint_path_b=CHECKPOINT, data_path="datasets/fundus"
        )
    )
    assert same.comparison.difference == 0.0 and same.comparison.p_value == 1.0


async def test_compare_refuses_what_it_cannot_pair_naming_the_field(tools: Tools) -> None:
    executor = tools.executor()
    with pytest.raises(grpc.RpcError) as missing:
        await executor.CompareCheckpoints(
            executor_pb2.CompareCheckpointsRequest(
                checkpoint_path_a=CHECKPOINT,
                checkpoint_path_b="runs/r1/checkpoints/nothing.pt",
                data_path="datasets/fundus",
            )
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "checkpoint_path_b" in str(missing.value.details())
    with pytest.raises(grpc.RpcError) as outside:
        await executor.CompareCheckpoints(
            executor_pb2.CompareCheckpointsRequest(
                checkpoint_path_a=CHECKPOINT, checkpoint_path_b=CHECKPOINT, data_path="../etc"
            )
        )
    # Governance's policy refuses the path before the executor resolves it.
    assert outside.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "data_path" in str(outside.value.details())


@pytest.mark.parametrize("samples", [0, 99, 100_001, -1])
async def test_bootstrap_samples_out_of_bounds_is_invalid_argument(
    tools: Tools, samples: int
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        await tools.executor().EvaluateCheckpoint(
            executor_pb2.EvaluateCheckpointRequest(
                checkpoint_path=CHECKPOINT,
                data_path="datasets/fundus",
                bootstrap_samples=samples,
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bootstrap_samples" in str(info.value.details())


async def test_list_delete_and_retention(tools: Tools) -> None:
    executor = tools.executor()
    listing = await executor.ListCheckpoints(
        executor_pb2.ListCheckpointsRequest(checkpoint_dir="runs/r1/checkpoints")
    )
    by_kind = {c.kind: c for c in listing.checkpoints}
    assert set(by_kind) == {common_pb2.CHECKPOINT_KIND_BEST, common_pb2.CHECKPOINT_KIND_LAST}
    assert by_kind[common_pb2.CHECKPOINT_KIND_LAST].epoch == 2
    assert "val_auc" in by_kind[common_pb2.CHECKPOINT_KIND_BEST].metrics
    assert all(c.size_bytes > 0 and c.sha256 for c in listing.checkpoints)
    with pytest.raises(aio.AioRpcError) as info:
        await executor.DeleteCheckpoint(
            executor_pb2.DeleteCheckpointRequest(
                retention=executor_pb2.RetentionRule(
                    checkpoint_dir="runs/r1/checkpoints", keep_best=1, metric="val_auc"
                )
            )
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    reply = await tools.executor(Role.OPERATOR).DeleteCheckpoint(
        executor_pb2.DeleteCheckpointRequest(
            retention=executor_pb2.RetentionRule(
                checkpoint_dir="runs/r1/checkpoints",
                keep_best=1,
                metric="val_auc",
                mode=common_pb2.METRIC_MODE_MAX,
            )
        )
    )
    assert len(reply.deleted_paths) == 1
    remaining = sorted(p.name for p in (tools.home / "runs/r1/checkpoints").glob("*.pt"))
    assert len(remaining) == 1
    deleted = await executor.DeleteCheckpoint(
        executor_pb2.DeleteCheckpointRequest(path=f"runs/r1/checkpoints/{remaining[0]}")
    )
    assert deleted.deleted_paths == [f"runs/r1/checkpoints/{remaining[0]}"]
    # Each deletion says which governance transaction made it.
    assert reply.transaction_id and deleted.transaction_id
    assert reply.transaction_id != deleted.transaction_id
    assert not list((tools.home / "runs/r1/checkpoints").iterdir())


async def test_gradcam_pngs_differ_between_classes(tools: Tools) -> None:
    reply = await tools.executor().GenerateVisualizations(
        executor_pb2.GenerateVisualizationsRequest(
            checkpoint_path=CHECKPOINT, data_path="datasets/fundus", split="test", num_images=4
        )
    )
    assert len(reply.images) == 4
    index = json.loads((tools.home / reply.index_path).read_text())
    assert len(index["images"]) == 4
    by_class: dict[str, np.ndarray] = {}
    for image in reply.images:
        pixels = np.asarray(Image.open(tools.home / image.path), dtype=np.float64)
        assert pixels.shape == (SIZE, SIZE, 3)
        by_class.setdefault(image.true_class, pixels)
    assert set(by_class) == {"glaucoma", "normal"}
    assert np.abs(by_class["glaucoma"] - by_class["normal"]).mean() > 1.0


async def test_a_link_planted_in_the_output_folder_is_not_written_through(
    tools: Tools,
) -> None:
    output = tools.home / "runs" / "r1" / "planted"
    output.mkdir(parents=True)
    victim = tools.home / "runs" / "r1" / "victim.txt"
    victim.write_text("not yours")
    (output / "index.json").symlink_to(victim)
    reply = await tools.executor().GenerateVisualizations(
        executor_pb2.GenerateVisualizationsRequest(
            checkpoint_path=CHECKPOINT,
            data_path="datasets/fundus",
            split="test",
            num_images=2,
            output_dir="runs/r1/planted",
        )
    )
    assert victim.read_text() == "not yours"
    index = output / "index.json"
    assert not index.is_symlink() and len(json.loads(index.read_text())["images"]) == 2
    assert len(reply.images) == 2


async def test_attention_maps_of_a_cnn_are_refused_naming_method(tools: Tools) -> None:
    for method in (executor_pb2.VISUALIZATION_METHOD_ATTENTION, 99):
        with pytest.raises(aio.AioRpcError) as info:
            await tools.executor().GenerateVisualizations(
                executor_pb2.GenerateVisualizationsRequest(
                    checkpoint_path=CHECKPOINT,
                    data_path="datasets/fundus",
                    num_images=2,
                    method=method,  # type: ignore[arg-type]
                )
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "method" in (info.value.details() or "")


async def test_failing_tool_is_rolled_back_exactly(tools: Tools) -> None:
    output = tools.home / "runs" / "r1" / "cams"
    output.mkdir()
    (output / "keep.txt").write_text("from before")
    before = tree_digest(output)
    bad = tools.home / "datasets" / "fundus" / "test" / "normal" / "aa_corrupt.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(aio.AioRpcError) as info:
        await tools.executor().GenerateVisualizations(
            executor_pb2.GenerateVisualizationsRequest(
                checkpoint_path=CHECKPOINT,
                data_path="datasets/fundus",
                split="test",
                num_images=12,
                output_dir="runs/r1/cams",
            )
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert tree_digest(output) == before  # the PNGs written before the failure are gone
    records = await tools.governance().ListAuditRecords(governance_pb2.ListAuditRecordsRequest())
    assert any(r.action == "rollback_transaction" for r in records.records)


async def test_dvc_push_delete_pull_identical(tools: Tools) -> None:
    dataset = tools.home / "datasets" / "acuvue_small"
    shutil.copytree(tools.home / "datasets" / "fundus" / "val", dataset)
    before = tree_digest(dataset)
    executor = tools.executor()
    pushed = await executor.SyncDatasets(
        executor_pb2.SyncDatasetsRequest(
            direction=executor_pb2.SYNC_DIRECTION_PUSH, dataset_ids=["acuvue_small"]
        )
    )
    # DVC moves every file plus the directory's listing object.
    assert pushed.transfers[0].files_transferred == len(before) + 1
    revision = pushed.transfers[0].revision
    assert (tools.home / "dvc-remote").is_dir()
    shutil.rmtree(dataset)
    shutil.rmtree(tools.home / ".dvc" / "cache")
    pulled = await executor.SyncDatasets(
        executor_pb2.SyncDatasetsRequest(
            direction=executor_pb2.SYNC_DIRECTION_PULL, dataset_ids=["acuvue_small"]
        )
    )
    assert pulled.transfers[0].revision == revision
    assert pulled.transfers[0].files_transferred >= 1
    assert tree_digest(dataset) == before


async def test_valid_patch_is_committed_with_its_hash(tools: Tools) -> None:
    repo = tools.home / "code" / "models"
    patch = (
        "--- a/net.py\n+++ b/net.py\n@@ -1,3 +1,3 @@\n import torch\n \n-WIDTH = 64\n+WIDTH = 128\n"
    )
    reply = await tools.executor().ApplyCodePatch(
        executor_pb2.ApplyCodePatchRequest(
            repository="models", patch=patch, message="wider network"
        )
    )
    assert (repo / "net.py").read_text() == "import torch\n\nWIDTH = 128\n"
    assert reply.files_changed == ["net.py"] and (reply.lines_added, reply.lines_removed) == (1, 1)
    assert git(repo, "rev-parse", "HEAD").strip() == reply.commit_sha
    assert f"Arc-Patch-SHA256: {reply.patch_sha256}" in git(repo, "log", "-1", "--format=%B")
    assert reply.patch_sha256 == hashlib.sha256(patch.encode()).hexdigest()


MALICIOUS = {
    "traversal": "--- a/../../escape.txt\n+++ b/../../escape.txt\n@@ -0,0 +1 @@\n+pwned\n",
    "absolute": "--- /dev/null\n+++ /tmp/arc-absolute-pwned\n@@ -0,0 +1 @@\n+pwned\n",
    "git_hooks": (
        "diff --git a/.git/hooks/post-commit b/.git/hooks/post-commit\nnew file mode 100755\n"
        "--- /dev/null\n+++ b/.git/hooks/post-commit\n@@ -0,0 +1,2 @@\n"
        "+#!/bin/sh\n+touch /tmp/pwned\n"
    ),
    "symlink_then_write": (
        "diff --git a/link b/link\nnew file mode 120000\n--- /dev/null\n+++ b/link\n"
        "@@ -0,0 +1 @@\n+../../..\n\\ No newline at end of file\n"
        "diff --git a/link/escape.txt b/link/escape.txt\nnew file mode 100644\n"
        "--- /dev/null\n+++ b/link/escape.txt\n@@ -0,0 +1 @@\n+pwned\n"
    ),
    "binary": (
        "diff --git a/blob.bin b/blob.bin\nnew file mode 100644\nindex 0000000..1111111\n"
        "GIT binary patch\nliteral 4\nLcmZ?wWMBXQ01E&B\n\nliteral 0\nHcmV?d00001\n"
    ),
    "oversize": "--- a/net.py\n+++ b/net.py\n@@ -1,3 +1,503 @@\n import torch\n \n WIDTH = 64\n"
    + "".join(f"+LINE_{n} = {n}\n" for n in range(500)),
}


@pytest.mark.parametrize("name", sorted(MALICIOUS))
async def test_malicious_patches_apply_nothing(tools: Tools, name: str) -> None:
    repo = tools.home / "code" / "models"
    (repo / "existing_link").symlink_to(tools.home.parent)
    head = git(repo, "rev-parse", "HEAD")
    outside = tree_digest(tools.home.parent, skip=tuple(f"ws/{p}" for p in SERVICES_OWN))
    inside = tree_digest(repo, skip=(".git",))
    with pytest.raises(aio.AioRpcError) as info:
        await tools.executor().ApplyCodePatch(
            executor_pb2.ApplyCodePatchRequest(repository="models", patch=MALICIOUS[name])
        )
    assert info.value.code() in {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
    assert git(repo, "rev-parse", "HEAD") == head
    assert tree_digest(repo, skip=(".git",)) == inside
    assert tree_digest(tools.home.parent, skip=tuple(f"ws/{p}" for p in SERVICES_OWN)) == outside
    assert not Path("/tmp/arc-absolute-pwned").exists()


async def test_write_through_existing_symlink_refused(tools: Tools) -> None:
    repo = tools.home / "code" / "models"
    (repo / "existing_link").symlink_to(tools.home.parent)
    patch = "--- /dev/null\n+++ b/existing_link/escape.txt\n@@ -0,0 +1 @@\n+pwned\n"
    with pytest.raises(aio.AioRpcError) as info:
        await tools.executor().ApplyCodePatch(
            executor_pb2.ApplyCodePatchRequest(repository="models", patch=patch)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "symlink" in (info.value.details() or "")
    assert not (tools.home.parent / "escape.txt").exists()


async def test_a_spec_revision_trains_on_its_own_copy_not_the_shared_folder(
    tools: Tools,
) -> None:
    """dataset.dvc_revision: the run reads a read-only copy of that revision, made from
    DVC's cache; the shared datasets/<id> (where a user adds files, and other jobs read)
    is left exactly as it was."""
    from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
    from tests.integration.executor.conftest import job_config

    dataset = tools.home / "datasets" / "versioned"
    shutil.copytree(tools.home / "datasets" / "fundus", dataset)
    executor = tools.executor(Role.SERVICE)
    push = executor_pb2.SyncDatasetsRequest(
        direction=executor_pb2.SYNC_DIRECTION_PUSH, dataset_ids=["versioned"]
    )
    first = (await executor.SyncDatasets(push)).transfers[0].revision
    version_one = tree_digest(dataset)
    victim = next((dataset / "train" / "normal").glob("*.png"))
    victim.unlink()
    second = (await executor.SyncDatasets(push)).transfers[0].revision
    assert second != first
    added = dataset / "train" / "normal" / "added-by-a-user.png"
    shutil.copyfile(next((dataset / "train" / "normal").glob("*.png")), added)
    working_copy = tree_digest(dataset)
    config = job_config("job-dvc")
    config.experiment_spec.dataset.data_path = "datasets/versioned"
    config.experiment_spec.dataset.dvc_revision = first
    config.experiment_spec.dataset.image_size = SIZE
    config.experiment_spec.hyperparameters.epochs = 1
    gpu = gpu_pb2_grpc.GpuManagerServiceStub(tools.channel(tools.gpu_port, Role.SERVICE))
    granted = (await gpu.AcquireLease(gpu_pb2.AcquireLeaseRequest(job_id="job-dvc"))).lease
    run = (await executor.StartRun(executor_pb2.StartRunRequest(config=config, lease=granted))).run
    assert tree_digest(dataset) == working_copy and added.exists()  # untouched
    told = json.loads((tools.home / config.log_dir / f"{run.run_id}.input.json").read_text())
    copy = Path(told["data_path"])
    assert copy.parent == tools.home / "datasets" / ".revisions" / "versioned"
    assert tree_digest(copy) == version_one  # the revision the spec named
    assert not os.stat(next(copy.rglob("*.png"))).st_mode & 0o222  # read-only
    await executor.CancelRun(executor_pb2.CancelRunRequest(run_id=run.run_id))
