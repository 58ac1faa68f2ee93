"""Child process for torch tools: a JSON request on stdin, a JSON answer on stdout."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def main() -> int:
    request = json.loads(sys.stdin.read())
    try:
        from services.executor.tools import torchwork

        if request["tool"] == "evaluate":
            answer: object = torchwork.evaluate(
                Path(request["checkpoint"]),
                Path(request["data_path"]),
                request["split"],
                sha256=request["sha256"],
                bootstrap=int(request["bootstrap"]),
                seed=int(request["seed"]),
            )
        elif request["tool"] == "gradcam":
            answer = torchwork.gradcam(
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
        json.dump({"error": f"{type(exc).__name__}: {exc}"}, sys.stdout)
        return 1
    json.dump({"result": answer}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
