"""A RunPod serverless worker whose input chooses what it does (run as a script).

``{"mode": "succeed"}`` (the default) returns ``{"text": …, "worker_job_id": …}``;
``"fail"`` raises; ``"error"`` returns ``{"error": …}``, RunPod's way of failing a job
without raising; ``"empty"`` returns ``{}``.
"""

from __future__ import annotations

from typing import Any

import runpod


def handler(job: dict[str, Any]) -> dict[str, Any]:
    job_input = job["input"]
    mode = job_input.get("mode", "succeed")
    if mode == "fail":
        raise RuntimeError("the worker refused")
    if mode == "error":
        return {"error": "the prompt was refused"}
    if mode == "empty":
        return {}
    return {"text": f"hello {job_input.get('prompt')}", "worker_job_id": job["id"]}


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler})
