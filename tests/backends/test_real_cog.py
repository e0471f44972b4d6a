"""What a real Cog server (coglet 0.23) does on the wire, the facts ``backends.Cog`` relies on.

Raw httpx against ``python -m cog.server.http`` serving ``cog_model/predict.py`` (one
prediction slot); webhooks land in the test's receiver. Every prediction id is new, so a
test reads only its own webhooks (the receiver path names the id).
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from typing import Any

import httpx

from .conftest import Receiver, Request, ServerProcess

EVENTS = ["start", "output", "logs", "completed"]
TERMINAL = {"succeeded", "failed", "canceled"}
PNG_DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def new_id() -> str:
    # Every character a jobhook job id may hold (the URL path's unreserved set).
    return f"job-{uuid.uuid4().hex[:12]}.a_b~C"


def put(
    cog: ServerProcess, prediction_id: str, webhook: str | None = None, **job_input: Any
) -> httpx.Response:
    body: dict[str, Any] = {"input": job_input}
    if webhook is not None:
        body |= {"webhook": webhook, "webhook_events_filter": EVENTS}
    return httpx.put(
        f"{cog.url}/predictions/{prediction_id}",
        json=body,
        headers={"Prefer": "respond-async"},
    )


def hook_path(prediction_id: str) -> str:
    return f"/webhooks/jobhook/{prediction_id}"


def statuses(requests: list[Request]) -> list[str]:
    return [r.json()["status"] for r in requests]


def has_terminal(requests: list[Request]) -> bool:
    return any(status in TERMINAL for status in statuses(requests))


def wait_terminal(receiver: Receiver, prediction_id: str) -> tuple[list[Request], Request]:
    """All webhooks of the prediction once its terminal one came, and that one."""
    requests = receiver.wait_for(hook_path(prediction_id), has_terminal)
    [final] = [r for r in requests if r.json()["status"] in TERMINAL]
    return requests, final


def test_put_with_our_id_is_accepted_and_every_webhook_names_it(
    cog: ServerProcess, receiver: Receiver
) -> None:
    prediction_id = new_id()
    webhook = f"{receiver.url}{hook_path(prediction_id)}?token=abc.def"
    answer = put(cog, prediction_id, webhook, steps=2, delay=0.05)
    assert answer.status_code == 202
    assert answer.json() == {"id": prediction_id, "status": "starting"}

    requests, final = wait_terminal(receiver, prediction_id)
    for request in requests:
        assert request.method == "POST"
        assert request.target == f"{hook_path(prediction_id)}?token=abc.def"  # verbatim
        assert request.headers["user-agent"].startswith("coglet/")
        assert request.headers["content-type"] == "application/json"
        assert not {"webhook-id", "webhook-signature", "authorization"} & set(request.headers)
        assert request.json()["id"] == prediction_id
        assert set(request.json()) >= {"id", "status", "logs", "metrics"}
    assert statuses(requests)[0] == "processing"
    body = final.json()
    assert body["status"] == "succeeded"
    assert body["output"]["text"] == "done after 2 steps"
    # Without --upload-url a file output is inline, a data: URI.
    image = PNG_DATA_URI.fullmatch(body["output"]["image"])
    assert image is not None
    assert base64.b64decode(image.group(1)).startswith(b"\x89PNG")
    assert "predict_time" in body["metrics"]
    assert "error" not in body


def test_output_event_webhooks_carry_the_output_in_a_list(
    cog: ServerProcess, receiver: Receiver
) -> None:
    # A non-terminal webhook may carry `output` in another shape than the final one:
    # a profile must take the output from the terminal webhook only.
    # Cog throttles non-terminal webhooks, so a fast prediction may send none with
    # output: try a few predictions until one does.
    for _ in range(5):
        prediction_id = new_id()
        put(cog, prediction_id, f"{receiver.url}{hook_path(prediction_id)}", steps=1, delay=0)
        requests, final = wait_terminal(receiver, prediction_id)
        early = [r.json()["output"] for r in requests if r is not final and "output" in r.json()]
        if early:
            break
    assert early, "no prediction sent an output webhook before its terminal one"
    assert all(output == [final.json()["output"]] for output in early), early


def test_progress_lines_arrive_in_logs_of_processing_webhooks(
    cog: ServerProcess, receiver: Receiver
) -> None:
    prediction_id = new_id()
    put(cog, prediction_id, f"{receiver.url}{hook_path(prediction_id)}", steps=8, delay=0.15)
    requests, final = wait_terminal(receiver, prediction_id)
    partial = [
        r.json()["logs"]
        for r in requests
        if r.json()["status"] == "processing" and "step 1/8" in r.json()["logs"]
        if "step 8/8" not in r.json()["logs"]
    ]
    assert partial, "no processing webhook between the first and the last step"
    # logs is the whole log so far, not the lines since the last webhook.
    assert partial[0].startswith("step 1/8\nstep 2/8\n")
    assert final.json()["logs"] == "".join(f"step {i}/8\n" for i in range(1, 9))


def test_a_failing_prediction_sends_a_failed_webhook_with_a_string_error(
    cog: ServerProcess, receiver: Receiver
) -> None:
    prediction_id = new_id()
    answer = put(cog, prediction_id, f"{receiver.url}{hook_path(prediction_id)}", mode="fail")
    assert answer.status_code == 202
    _, final = wait_terminal(receiver, prediction_id)
    body = final.json()
    assert body["status"] == "failed"
    assert isinstance(body["error"], str)
    assert body["error"].endswith("RuntimeError: the model refused")
    assert "about to fail" in body["logs"]
    assert body.get("output") is None


def test_cancel_answers_200_and_a_canceled_webhook_follows(
    cog: ServerProcess, receiver: Receiver
) -> None:
    prediction_id = new_id()
    put(cog, prediction_id, f"{receiver.url}{hook_path(prediction_id)}", mode="long")
    receiver.wait_for(hook_path(prediction_id))  # it started
    cancel = httpx.post(f"{cog.url}/predictions/{prediction_id}/cancel")
    assert (cancel.status_code, cancel.json()) == (200, {})
    _, final = wait_terminal(receiver, prediction_id)
    assert final.json()["status"] == "canceled"
    # Once it ended, Cog forgets it: cancelling again, or an unknown id, is 404.
    again = httpx.post(f"{cog.url}/predictions/{prediction_id}/cancel")
    assert (again.status_code, again.json()) == (404, {})
    assert httpx.post(f"{cog.url}/predictions/{new_id()}/cancel").status_code == 404


def test_a_second_put_while_running_answers_the_same_prediction_and_runs_nothing(
    cog: ServerProcess, receiver: Receiver
) -> None:
    prediction_id = new_id()
    first = f"{receiver.url}{hook_path(prediction_id)}/first"
    put(cog, prediction_id, first, steps=3, delay=0.2)
    receiver.wait_for(hook_path(prediction_id))
    second = put(cog, prediction_id, f"{receiver.url}{hook_path(prediction_id)}/second", steps=1)
    assert second.status_code == 202
    state = second.json()
    # The running prediction's state, with the first PUT's input: the second is ignored.
    assert state["id"] == prediction_id
    assert state["status"] == "processing"
    assert state["input"] == {"steps": 3, "delay": 0.2}
    requests, final = wait_terminal(receiver, prediction_id)
    assert {r.path for r in requests} == {f"{hook_path(prediction_id)}/first"}
    assert final.json()["output"]["text"] == "done after 3 steps"
    assert final.json()["logs"].count("step 1/3") == 1


def test_a_put_after_the_prediction_ended_runs_it_again(
    cog: ServerProcess, receiver: Receiver
) -> None:
    # Cog keeps no finished predictions: a retried submit of a finished job is a new run.
    prediction_id = new_id()
    put(cog, prediction_id, f"{receiver.url}{hook_path(prediction_id)}", steps=1, delay=0)
    wait_terminal(receiver, prediction_id)
    _wait_idle(cog)
    again = put(cog, prediction_id, f"{receiver.url}{hook_path(prediction_id)}", steps=1, delay=0)
    assert again.json() == {"id": prediction_id, "status": "starting"}
    receiver.wait_for(hook_path(prediction_id), lambda rs: statuses(rs).count("succeeded") == 2)


def test_busy_answers_409_while_the_one_slot_is_taken(
    cog: ServerProcess, receiver: Receiver
) -> None:
    running = new_id()
    put(cog, running, f"{receiver.url}{hook_path(running)}", mode="long")
    receiver.wait_for(hook_path(running))
    try:
        other = new_id()
        busy = put(cog, other, f"{receiver.url}{hook_path(other)}", steps=1)
        assert busy.status_code == 409
        # Careful: the refusal says "status": "failed", about the request, not a job.
        assert busy.json() == {
            "error": "At capacity - all prediction slots busy",
            "status": "failed",
        }
        health = httpx.get(f"{cog.url}/health-check").json()
        assert health["status"] == "BUSY"
    finally:
        httpx.post(f"{cog.url}/predictions/{running}/cancel")
    wait_terminal(receiver, running)
    time.sleep(0.3)
    assert receiver.requests(hook_path(other)) == []  # the refused one never ran


def test_there_is_no_status_endpoint(cog: ServerProcess) -> None:
    answer = httpx.get(f"{cog.url}/predictions/{new_id()}")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "PUT"


def test_a_body_id_must_equal_the_url_id(cog: ServerProcess) -> None:
    answer = httpx.put(
        f"{cog.url}/predictions/{new_id()}",
        json={"id": "another", "input": {}},
        headers={"Prefer": "respond-async"},
    )
    assert answer.status_code == 422
    assert "must match the ID supplied in the URL" in answer.text


def test_terminal_webhooks_are_retried_on_503_with_the_same_body(
    cog: ServerProcess, receiver: Receiver
) -> None:
    prediction_id = new_id()
    path = hook_path(prediction_id)
    refusals = iter([503, 503])

    def flaky(request: Request) -> tuple[int, dict[str, str], bytes]:
        if request.json()["status"] in TERMINAL:
            return next(refusals, 200), {}, b""
        return 200, {}, b""

    receiver.route(path, flaky)
    put(cog, prediction_id, f"{receiver.url}{path}", steps=1, delay=0)
    requests = receiver.wait_for(path, lambda rs: statuses(rs).count("succeeded") == 3)
    bodies = {r.body for r in requests if r.json()["status"] == "succeeded"}
    assert len(bodies) == 1  # byte for byte: a delivery id taken from the content holds


def test_terminal_webhooks_stop_on_404(cog: ServerProcess, receiver: Receiver) -> None:
    # What the handler answers for an unknown job (kept as a dead letter): Cog gives up.
    prediction_id = new_id()
    path = hook_path(prediction_id)
    receiver.route(path, lambda request: (404, {}, b'{"outcome": "not_found"}'))
    put(cog, prediction_id, f"{receiver.url}{path}", steps=1, delay=0)
    receiver.wait_for(path, has_terminal)
    time.sleep(0.5)  # a retry would come after 100 ms
    assert statuses(receiver.requests(path)).count("succeeded") == 1


def _wait_idle(cog: ServerProcess) -> None:
    deadline = time.monotonic() + 5
    while httpx.get(f"{cog.url}/health-check").json()["status"] != "READY":
        assert time.monotonic() < deadline, "the Cog server stayed busy"
        time.sleep(0.02)
