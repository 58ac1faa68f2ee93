"""The executor trusts no metric batch from the pipe blindly: it checks each once (it must
parse, and hold the metrics it says), then stores and forwards its bytes as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arc_common import packed, sqlite
from arc_common.eventlog import EventLog
from arc_common.models import MetricResult, PackedMetrics, Run, RunEvent, metric_count
from services.executor.live import LiveRun
from services.executor.local_launcher import LocalLauncher
from services.executor.pipe import STEP_LOSS
from services.executor.protocol import TrainerMessage
from services.executor.run_store import SqliteRunStore
from services.executor.runs import RunManager
from services.executor.settings import ExecutorSettings


async def test_only_sound_batches_are_stored_and_epoch_metrics_are_kept(tmp_path: Path) -> None:
    db = await sqlite.connect(tmp_path / "executor.sqlite3")
    events = EventLog(db, model=RunEvent, table="run_events", key_field="run_id")
    await events.open()
    leases: Any = None  # no lease is checked on this path
    store = SqliteRunStore(db)
    await store.open()
    manager = RunManager(ExecutorSettings(home=tmp_path), store, events, leases, LocalLauncher())
    live = LiveRun(run=Run(run_id="r1"))
    sound = packed.pack(
        [
            MetricResult(name=STEP_LOSS, value=0.7, step=10, epoch=1, split="train"),
            MetricResult(name="val_auc", value=0.8, step=10, epoch=1, split="val"),
        ]
    )
    for batch in (
        PackedMetrics(count=3, data=sound.data),  # says 3, holds 2
        PackedMetrics(count=1, data=b"\xff\xff\xff"),  # not a MetricBatch
        PackedMetrics(),  # nothing in it
        sound,
    ):
        await manager._on_message(live, TrainerMessage(kind="metrics", metrics=batch))
    await events.flush()
    stored = await events.read("r1", 0)
    assert [e.metrics for e in stored] == [sound]  # one event: the sound batch
    assert (stored[0].sequence, metric_count(stored[0])) == (1, 2)
    assert [m.name for m in live.epoch_metrics] == ["val_auc"]  # step losses stay in events
    await events.close()
    await db.close()
