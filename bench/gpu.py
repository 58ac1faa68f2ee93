"""``make bench-gpu``: the GPU variant, one short script for a GPU machine (a few minutes).

Real NVML (the gpu-manager's nvml backend), CUDA training forked from the warm pool, the
gap between two jobs on one real GPU, StartRun to the first step, cancel, and training
overhead against the bare trainer. The results name the hardware and go to
``bench/results/gpu-latest.json``. Without CUDA it says so and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import engine
from bench.common import REPO


def hardware() -> dict[str, Any]:
    """GPU names, memory and driver from NVML, in a child (this process stays CUDA-free)."""
    probe = (
        "import json, pynvml, torch\n"
        "pynvml.nvmlInit()\n"
        "gpus = []\n"
        "for i in range(pynvml.nvmlDeviceGetCount()):\n"
        "    h = pynvml.nvmlDeviceGetHandleByIndex(i)\n"
        "    name = pynvml.nvmlDeviceGetName(h)\n"
        "    mem = pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20\n"
        "    gpus.append({'index': i, 'name': str(name), 'memory_mib': int(mem)})\n"
        "print(json.dumps({'driver': str(pynvml.nvmlSystemGetDriverVersion()),\n"
        "    'cuda': torch.version.cuda, 'cuda_available': torch.cuda.is_available(),\n"
        "    'gpus': gpus}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=False
    )
    if out.returncode != 0:
        return {"cuda_available": False, "error": out.stderr.strip()[-500:]}
    info: dict[str, Any] = json.loads(out.stdout)
    return info


async def run_all(home: Path, *, job_seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    engine.make_dataset(home, count=640)
    async with engine.running_suite(home, env={"ARC_GPU_MANAGER_BACKEND": "nvml"}) as bench:
        results["start"] = await engine.start_latency(bench, tries=3)
        results["cancel"] = await engine.cancel_latency(bench, tries=3)
        results["training"] = await engine.training_overhead(bench, epochs=3, rounds=2)
        per_epoch = results["training"]["suite"]["wall_s"] / 3
        results["gap"] = await engine.inter_job_gap(
            bench, epochs=max(2, round(job_seconds / per_epoch))
        )
    results["streaming"] = await engine.streaming_cost(
        home / "streaming", epochs=20, env={"ARC_GPU_MANAGER_BACKEND": "nvml"}
    )
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job-seconds", type=float, default=30.0)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu-latest.json"))
    args = parser.parse_args()
    info = hardware()
    if not info.get("cuda_available"):
        print(f"no CUDA GPU here: {info.get('error', 'torch sees none')}")
        return 2
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="arc-bench-gpu-") as tmp:
        try:
            results = asyncio.run(run_all(Path(tmp), job_seconds=args.job_seconds))
        except Exception as exc:
            results = {"error": f"{type(exc).__name__}: {exc}"}
    s, g, t, c, m = (
        results.get(k, {}) for k in ("start", "gap", "training", "cancel", "streaming")
    )
    names = ", ".join(gpu["name"] for gpu in info["gpus"])
    print(f"GPU benchmark on {names} (driver {info['driver']}, CUDA {info['cuda']})")
    if s:
        print(
            f"4 StartRun to first step {s['start_to_first_step_s'] * 1000:.0f} ms "
            f"(end {s['start_to_first_step_done_s'] * 1000:.0f} ms), "
            f"ratio {s['ratio']:.3f} to a cold import"
        )
    if c:
        print(f"9 cancel {c['cancel_s'] * 1000:.0f} ms, ratio {c['ratio']:.2f} to a raw kill")
    if t:
        print(
            f"3 training suite/bare {t['wall_ratio']:.3f}; "
            f"7 step time, separate runs {t['step_time_ratio']:.3f}"
        )
    if m:
        print(f"7 step time streaming on / off, {m['pairs']} paired epochs: {m['ratio']:.3f}")
    if g:
        print(
            f"5 gap {g['gap_s']:.2f} s between {g['job_seconds']:.0f} s jobs, "
            f"ratio {g['ratio']:.4f} (A's last validation and test {g['a_gpu_epilogue_s']:.2f} "
            f"s, then the engine {g['engine_gap_s']:.2f} s)"
        )
    if "error" in results:
        print(f"INCOMPLETE: {results['error']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "host": platform.node(),
                "hardware": info,
                "seconds": round(time.monotonic() - began),
                **results,
            },
            indent=2,
        )
    )
    return 1 if "error" in results else 0


if __name__ == "__main__":
    sys.exit(main())
