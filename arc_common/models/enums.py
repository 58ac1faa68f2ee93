"""The enums; values are the proto value names without their prefix, lower-cased."""

from __future__ import annotations

from enum import StrEnum


class ArchitectureFamily(StrEnum):
    RESNET = "resnet"
    EFFICIENTNET = "efficientnet"
    DENSENET = "densenet"
    MOBILENET = "mobilenet"
    CONVNEXT = "convnext"
    VIT = "vit"
    REGNET = "regnet"
    VGG = "vgg"
    SWIN = "swin"
    CUSTOM = "custom"  # built by the spec's source


class OptimizerType(StrEnum):
    ADAM = "adam"
    ADAMW = "adamw"
    SGD = "sgd"


class LrScheduleType(StrEnum):
    NONE = "none"
    STEP = "step"
    COSINE = "cosine"


class DatasetType(StrEnum):
    IMAGE_FOLDER = "image_folder"
    SPLIT_FOLDERS = "split_folders"


class PreprocessingStepType(StrEnum):
    RESIZE = "resize"
    CENTER_CROP = "center_crop"
    NORMALIZE = "normalize"
    CLAHE = "clahe"
    GREEN_CHANNEL = "green_channel"
    HORIZONTAL_FLIP = "horizontal_flip"
    VERTICAL_FLIP = "vertical_flip"
    ROTATION = "rotation"
    COLOR_JITTER = "color_jitter"
    RANDOM_RESIZED_CROP = "random_resized_crop"


class NoveltyClass(StrEnum):
    EXPLOIT = "exploit"
    EXPLORE = "explore"
    WILDCAT = "wildcat"


class GpuPreference(StrEnum):
    AUTO = "auto"
    SPECIFIC = "specific"


class MetricMode(StrEnum):
    MAX = "max"
    MIN = "min"


class JobState(StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    PRUNED = "pruned"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMED_OUT,
        JobState.PRUNED,
    }
)


class CheckpointKind(StrEnum):
    BEST = "best"
    LAST = "last"


class GpuBackend(StrEnum):
    NVML = "nvml"
    SIMULATED = "simulated"


class Tool(StrEnum):
    RUN_TRAINING_JOB = "run_training_job"
    RUN_EVALUATION_JOB = "run_evaluation_job"
    PREPROCESS_DATASET = "preprocess_dataset"
    MANAGE_CHECKPOINTS = "manage_checkpoints"
    GENERATE_VISUALIZATIONS = "generate_visualizations"
    SYNC_DATASETS = "sync_datasets"
    APPLY_CODE_PATCH = "apply_code_patch"
    CREATE_SWEEP = "create_sweep"


class Mode(StrEnum):
    AUTONOMOUS = "autonomous"
    SUPERVISED = "supervised"
    LOCKED = "locked"


class RunEndCause(StrEnum):
    """Why a run ended (arc.common.v1.RunEndCause): what retries are decided on."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PRUNED = "pruned"
    LOST_LEASE = "lost_lease"
    EXECUTOR_SHUTDOWN = "executor_shutdown"
    TIMED_OUT = "timed_out"
    OOM = "oom"
    CRASHED = "crashed"


class FailureClass(StrEnum):
    """What kind of failure ended a job (arc.common.v1.FailureClass)."""

    SPEC_INVALID = "spec_invalid"
    DATA_ERROR = "data_error"
    CODE_ERROR = "code_error"
    OUT_OF_MEMORY = "out_of_memory"
    DIVERGED = "diverged"
    TIMED_OUT = "timed_out"
    LEASE_LOST = "lease_lost"
    INFRASTRUCTURE = "infrastructure"
    CANCELLED = "cancelled"
    PRUNED = "pruned"


# Failures that would come back the same on a retry.
NOT_RETRIED = frozenset(
    {
        FailureClass.SPEC_INVALID,
        FailureClass.DATA_ERROR,
        FailureClass.CODE_ERROR,
        FailureClass.DIVERGED,
        # Retried once at half the batch size when the spec allows (halve_batch_on_oom).
        FailureClass.OUT_OF_MEMORY,
    }
)


class ViolationKind(StrEnum):
    POLICY = "policy"
    MALFORMED = "malformed"
    QUOTA = "quota"
    BUDGET = "budget"


class DecisionOutcome(StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"
    PENDING_APPROVAL = "pending_approval"


class TransactionState(StrEnum):
    OPEN = "open"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"


class PendingRequestState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
