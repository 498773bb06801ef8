"""Lint and render the Helm chart with Helm's own Go engine (helm-python-sdk), in a child process.

helm_python loads the Go runtime into the process, and a process must not fork after that, so
the test suite never imports it: tests/test_deploy_helm.py runs this script with the venv's
python, writes a JSON request on stdin and reads one JSON answer from stdout.

request:  {"chart": PATH, "jobs": [{"id": ID, "op": "lint" | "render", "values": {...},
           "kube_version": "v1.30.0", "name": RELEASE, "namespace": NS}, ...]}
answer:   {ID: {"ok": true, "result": ...} | {"ok": false, "error": "...", "type": "HelmRenderError"}}
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    import helm_python

    request = json.load(sys.stdin)
    chart_path = request["chart"]
    answers: dict[str, object] = {}
    with helm_python.Chart.load(chart_path) as chart:
        for job in request["jobs"]:
            try:
                if job["op"] == "lint":
                    result: object = helm_python.lint(
                        chart_path,
                        values=job.get("values") or {},
                        strict=True,
                        namespace=job.get("namespace", "default"),
                        kube_version=job.get("kube_version"),
                    )
                elif job["op"] == "render":
                    result = chart.render(
                        job.get("values") or {},
                        name=job.get("name", "fp"),
                        namespace=job.get("namespace", "default"),
                        is_install=True,
                    )
                else:
                    raise ValueError(f"unknown op {job['op']!r}")
                answers[job["id"]] = {"ok": True, "result": result}
            except Exception as exc:  # noqa: BLE001 - reported to the test, which decides
                answers[job["id"]] = {"ok": False, "type": type(exc).__name__, "error": str(exc)}
    json.dump(answers, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
