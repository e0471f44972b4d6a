"""What RunPod's local API server (runpod 1.12, ``--rp_serve_api``) does on the wire.

Raw httpx against ``runpod_worker/handler.py`` served by the SDK's FastAPI simulator; its
webhooks land in the test's receiver. The simulator is not production RunPod: its routes
have no ``/v2/{endpoint_id}`` prefix, nothing runs until the job's status is asked for, and
a webhook is sent once, for a completed job only. These tests pin what it does, so that
``backends.RunPod(..., base_url=…)`` can be driven against it.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import httpx

from .conftest import Receiver, ServerProcess

RUNPOD_ID = re.compile(r"test-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def hook_path() -> str:
    return f"/webhooks/jobhook/job-{uuid.uuid4().hex[:12]}"


def run(runpod: ServerProcess, webhook: str | None = None, **job_input: Any) -> httpx.Response:
    body: dict[str, Any] = {"input": job_input}
    if webhook is not None:
        body["webhook"] = webhook
    return httpx.post(f"{runpod.url}/run", json=body)


def status(runpod: ServerProcess, remote_id: str) -> httpx.Response:
    return httpx.post(f"{runpod.url}/status/{remote_id}", timeout=10)


def test_the_simulator_has_four_post_routes(runpod_server: ServerProcess) -> None:
    schema = httpx.get(f"{runpod_server.url}/openapi.json").json()
    routes = {path: sorted(methods) for path, methods in schema["paths"].items()}
    assert routes == {
        "/run": ["post"],
        "/runsync": ["post"],
        "/status/{job_id}": ["post"],
        "/stream/{job_id}": ["post"],
    }
    # Production's paths, its GET status and its cancel route are not there.
    assert httpx.get(f"{runpod_server.url}/status/x").status_code == 405
    assert httpx.post(f"{runpod_server.url}/cancel/x").status_code == 404
    assert httpx.post(f"{runpod_server.url}/v2/endpoint/run", json={"input": {}}).status_code == 404


def test_run_answers_its_own_id_and_nothing_runs_until_status_is_asked(
    runpod_server: ServerProcess, receiver: Receiver
) -> None:
    path = hook_path()
    answer = run(runpod_server, f"{receiver.url}{path}?token=abc", prompt="a fox", id="ours")
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"id", "status"}
    assert RUNPOD_ID.fullmatch(body["id"])  # its own id; an "id" we send is ignored
    assert body["status"] == "IN_PROGRESS"
    time.sleep(0.3)
    assert receiver.requests(path) == []  # queued, not run

    done = status(runpod_server, body["id"])
    assert done.status_code == 200
    output = {"text": "hello a fox", "worker_job_id": body["id"]}
    assert done.json() == {"id": body["id"], "status": "COMPLETED", "output": output}


def test_the_webhook_is_one_unsigned_post_of_the_output_alone(
    runpod_server: ServerProcess, receiver: Receiver
) -> None:
    path = hook_path()
    remote_id = run(runpod_server, f"{receiver.url}{path}?token=abc", prompt="owl").json()["id"]
    status(runpod_server, remote_id)
    [hook] = receiver.wait_for(path)
    assert hook.method == "POST"
    assert hook.target == f"{path}?token=abc"  # the URL verbatim, query kept
    assert hook.headers["content-type"] == "application/json"
    assert hook.headers["user-agent"].startswith("python-requests/")
    assert not {"webhook-id", "webhook-signature", "authorization"} & set(hook.headers)
    # No id and no status: only the URL says which job this is.
    output = {"text": "hello owl", "worker_job_id": remote_id}
    assert hook.body == json.dumps({"output": output}).encode()
    time.sleep(0.3)
    assert len(receiver.requests(path)) == 1


def test_an_empty_output_sends_a_bare_webhook_and_breaks_status(
    runpod_server: ServerProcess, receiver: Receiver
) -> None:
    # The SDK drops an output equal to {}: the webhook is a bare {}, and the status answer
    # is a 500 (the simulator indexes the missing "output"), after which it forgot the job.
    path = hook_path()
    remote_id = run(runpod_server, f"{receiver.url}{path}", mode="empty").json()["id"]
    assert status(runpod_server, remote_id).status_code == 500
    [hook] = receiver.wait_for(path)
    assert hook.body == b"{}"
    assert status(runpod_server, remote_id).json()["error"] == "Job ID not found"


def test_a_finished_job_is_forgotten_and_unknown_ids_answer_200_failed(
    runpod_server: ServerProcess, receiver: Receiver
) -> None:
    remote_id = run(runpod_server, f"{receiver.url}{hook_path()}", prompt="x").json()["id"]
    assert status(runpod_server, remote_id).json()["status"] == "COMPLETED"
    # Asking again, or about an id it never had: 200 with status FAILED, not a 404.
    again = status(runpod_server, remote_id)
    assert again.status_code == 200
    assert again.json() == {"id": remote_id, "status": "FAILED", "error": "Job ID not found"}
    unknown = status(runpod_server, "test-unknown")
    assert (unknown.status_code, unknown.json()["error"]) == (200, "Job ID not found")


def test_a_raising_handler_fails_the_job_with_a_json_error_and_no_webhook(
    runpod_server: ServerProcess, receiver: Receiver
) -> None:
    path = hook_path()
    remote_id = run(runpod_server, f"{receiver.url}{path}", mode="fail").json()["id"]
    failed = status(runpod_server, remote_id).json()
    assert failed["status"] == "FAILED"
    assert "output" not in failed
    error = json.loads(failed["error"])  # a JSON document inside a string
    assert error["error_type"] == "<class 'RuntimeError'>"
    assert error["error_message"] == "the worker refused"
    assert "Traceback" in error["error_traceback"]
    time.sleep(0.3)
    assert receiver.requests(path) == []


def test_a_handler_returning_error_fails_the_job_with_that_string_and_no_webhook(
    runpod_server: ServerProcess, receiver: Receiver
) -> None:
    path = hook_path()
    remote_id = run(runpod_server, f"{receiver.url}{path}", mode="error").json()["id"]
    failed = status(runpod_server, remote_id).json()
    assert failed == {"id": remote_id, "status": "FAILED", "error": "the prompt was refused"}
    time.sleep(0.3)
    assert receiver.requests(path) == []


def test_the_webhook_is_not_retried(runpod_server: ServerProcess, receiver: Receiver) -> None:
    path = hook_path()
    receiver.route(path, lambda request: (503, {}, b""))
    remote_id = run(runpod_server, f"{receiver.url}{path}", prompt="y").json()["id"]
    status(runpod_server, remote_id)
    receiver.wait_for(path)
    time.sleep(0.5)
    assert len(receiver.requests(path)) == 1


def test_input_must_be_a_json_object(runpod_server: ServerProcess) -> None:
    answer = httpx.post(f"{runpod_server.url}/run", json={"input": "a fox"})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "input"]
