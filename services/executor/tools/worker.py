"""Child process for torch tools: a JSON request on stdin, a JSON answer on stdout."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def main() -> int:
    request = json.loads(sys.stdin.read())
    try:
        from services.executor.tools import scoring, torchwork

        if request["tool"] == "evaluate":
            answer: object = scoring.evaluate(
                Path(request["checkpoint"]),
                Path(request["data_path"]),
                request["split"],
                sha256=request["sha256"],
                bootstrap=int(request["bootstrap"]),
                seed=int(request["seed"]),
                dataset_id=request["dataset_id"],
                data_path_name=request["data_path_name"],
                figures=Path(request["figures"]) if request.get("figures") else None,
            )
        elif request["tool"] == "compare":
            answer = scoring.compare(
                (Path(request["checkpoint_a"]), Path(request["checkpoint_b"])),
                (request["sha256_a"], request["sha256_b"]),
                Path(request["data_path"]),
                request["split"],
            )
        elif request["tool"] in ("gradcam", "attention"):
            method = torchwork.gradcam if request["tool"] == "gradcam" else torchwork.attention
            answer = method(
                Path(request["checkpoint"]),
                Path(request["data_path"]),
                request["split"],
                Path(request["output"]),
                sha256=request["sha256"],
                count=int(request["count"]),
            )
        else:
            raise ValueError(f"unknown tool {request['tool']!r}")
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        # Only torchwork.UnsupportedRequest is the caller's to fix (INVALID_ARGUMENT).
        work = sys.modules.get("services.executor.tools.torchwork")
        unsupported = work is not None and isinstance(exc, work.UnsupportedRequest)
        field = str(getattr(exc, "field", "")) if unsupported else ""
        message = str(exc) if field else f"{type(exc).__name__}: {exc}"
        json.dump({"error": message, "field": field}, sys.stdout)
        return 1
    json.dump({"result": answer}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
