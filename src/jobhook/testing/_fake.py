"""`FakeGenerator`: a generator backend that follows the wire contract, for tests.

The fake's state (jobs, planned callbacks, records) sits behind one lock; requests
reach it through `FakeGenerator.handle_request` (an httpx transport or the loopback
server) and callbacks leave through `CallbackSender`.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal
from urllib.parse import unquote

import attrs
import httpx

from jobhook._convert import update_to_dict
from jobhook._models import JobStatus, JobUpdate
from jobhook.sender import AsyncCallbackSender, CallbackSender, DeliveryReport
from jobhook.testing._scripts import Chaos, Script, Scripts, Submission

__all__ = ["FakeGenerator", "SentCallback"]

log = logging.getLogger("jobhook.testing")

DeliveryMode = Literal["manual", "background", "before_answer"]


@attrs.frozen
class SentCallback:
    """One callback the fake sent, or lost on purpose (``dropped``)."""

    job_id: str
    payload: dict[str, Any]
    msg_id: str
    dropped: bool
    report: DeliveryReport | None


@attrs.frozen
class _Planned:
    due: float
    job_id: str
    url: str
    payload: dict[str, Any]
    msg_id: str
    dropped: bool
    step: int  # index of the script step, -1 for a cancel callback


@attrs.define
class _FakeJob:
    job_id: str
    wire_id: str  # the id the fake answers and calls back with
    remote_id: str
    callback_url: str
    steps: list[JobUpdate]
    reached: int = -1  # highest step index sent or dropped so far
    canceled: bool = False

    def state(self) -> JobUpdate | None:
        if self.canceled:
            return JobUpdate(JobStatus.CANCELED)
        return self.steps[self.reached] if self.reached >= 0 else None

    def payload(self, update: JobUpdate) -> dict[str, Any]:
        return {"job_id": self.wire_id, "remote_id": self.remote_id, **update_to_dict(update)}


def _json_response(
    status: int, data: Any, headers: Mapping[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(status, json=data, headers=dict(headers or {}))


def _is_http_url(value: str) -> bool:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        return False
    return url.scheme in ("http", "https") and bool(url.host)


class FakeGenerator:
    """A generator backend for tests: ``POST /jobs``, ``GET /jobs/{job_id}`` and
    ``POST /jobs/{job_id}/cancel``, calling back signed with ``secret``.

    Reach it in-process through `transport` / `async_transport`, or over loopback HTTP
    with `serve`. Each new job runs ``script`` (default `Scripts.success`; per job with
    `set_script`). ``delivery`` says when callbacks leave: ``"manual"`` (queued until
    `deliver_all` / `deliver_next`), ``"background"`` (``workers`` threads send them
    as they fall due) or ``"before_answer"`` (all of them, before the submit is
    answered: the race where the webhook wins). ``chaos`` duplicates, reorders, drops
    and delays callbacks. ``mismatched_ids=True`` answers and calls back with the
    fake's own job id: the bug jobhook exists to catch.

    Callbacks go to the submitted ``callback_url`` over HTTP (``callback_client``, by
    default a plain `httpx.Client`), or straight into ``handler`` (a `WebhookHandler`)
    with the route's job id and the URL's ``token``. Thread-safe.
    """

    submit_path = "/jobs"
    status_path = "/jobs/{job_id}"
    cancel_path = "/jobs/{job_id}/cancel"

    def __init__(
        self,
        secret: str | bytes,
        *,
        script: Script | None = None,
        delivery: DeliveryMode = "manual",
        chaos: Chaos | None = None,
        mismatched_ids: bool = False,
        handler: Any = None,
        callback_client: httpx.Client | None = None,
        workers: int = 1,
        step_interval: float = 0.0,
        sender_attempts: int = 5,
    ) -> None:
        if delivery not in ("manual", "background", "before_answer"):
            raise ValueError(f"delivery must be manual, background or before_answer: {delivery!r}")
        if handler is not None and callback_client is not None:
            raise ValueError("pass handler= or callback_client=, not both")
        self.secret = secret
        self.delivery: DeliveryMode = delivery
        self.chaos = chaos or Chaos()
        self.mismatched_ids = mismatched_ids
        self.handler = handler
        self.submissions: list[Submission] = []
        self.callbacks: list[SentCallback] = []
        self._script = script or Scripts.success()
        self._scripts: dict[str, Script] = {}
        self._jobs: dict[str, _FakeJob] = {}
        self._by_wire_id: dict[str, _FakeJob] = {}
        self._route_ids: dict[str, str] = {}
        self._queue: list[tuple[float, int, _Planned]] = []
        self._order = itertools.count()
        self._failures: list[tuple[int, dict[str, str], Any]] = []
        self._rng = random.Random(self.chaos.seed)
        self._cond = threading.Condition()
        self._in_flight = 0
        self._closed = False
        self._workers: list[threading.Thread] = []
        self._worker_count = workers
        self._step_interval = step_interval
        self._sender_attempts = sender_attempts
        self._owns_client = callback_client is None
        if handler is not None:
            callback_client = httpx.Client(transport=httpx.MockTransport(self._to_handler))
        self._callback_client = callback_client or httpx.Client(timeout=10.0)
        self._sender = self._make_sender(self._callback_client)

    def __repr__(self) -> str:
        return f"<FakeGenerator jobs={len(self._jobs)} delivery={self.delivery!r}>"

    # -- the app's side of the wire ---------------------------------------------------

    @property
    def transport(self) -> httpx.MockTransport:
        """An httpx transport that answers in-process: ``httpx.Client(transport=…)``."""
        return httpx.MockTransport(self.handle_request)

    @property
    def async_transport(self) -> httpx.MockTransport:
        """The same for ``httpx.AsyncClient``; ``before_answer`` callbacks are awaited
        (through ``handler.ahandle`` when a handler is set)."""
        return httpx.MockTransport(self.ahandle_request)

    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve the fake over HTTP on ``host`` (a free ``port`` by default) while the
        block runs; yields the base URL, e.g. ``http://127.0.0.1:54321``."""
        from jobhook.testing._server import serve

        with serve(self, host, port) as base_url:
            yield base_url

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Answer one request (sync); ``before_answer`` callbacks are sent first."""
        response, planned = self._answer(request)
        for item in planned:
            self._send(item, self._sender)
        return response

    async def ahandle_request(self, request: httpx.Request) -> httpx.Response:
        """Answer one request (async); ``before_answer`` callbacks are awaited first."""
        response, planned = self._answer(request)
        if planned:
            async with self._async_sender() as sender:
                for item in planned:
                    await self._asend(item, sender)
        return response

    # -- scripting and inspection -----------------------------------------------------

    def set_script(self, job_id: str, script: Script) -> None:
        """Use ``script`` for the job submitted with ``job_id`` (before it is submitted)."""
        with self._cond:
            self._scripts[job_id] = script

    def fail_next_submits(
        self,
        status: int = 503,
        *,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> None:
        """Answer the next ``times`` submits with ``status`` (e.g. 503 with a
        ``Retry-After`` header) without taking the job."""
        body = json if json is not None else {"error": f"fake failure {status}"}
        with self._cond:
            self._failures.extend([(status, dict(headers or {}), body)] * times)

    def job_ids(self) -> list[str]:
        """The app's job ids the fake has taken, in order."""
        with self._cond:
            return list(self._jobs)

    def final_status(self, job_id: str) -> JobStatus | None:
        """The status the fake decided the job ends in (``None``: no terminal step).

        Raises `KeyError` for a job the fake never took.
        """
        with self._cond:
            job = self._jobs[job_id]
            if job.canceled:
                return JobStatus.CANCELED
            last = job.steps[-1].status if job.steps else None
        return last if last is not None and last.terminal else None

    def pending(self) -> int:
        """How many callbacks wait to be sent."""
        with self._cond:
            return len(self._queue)

    def deliver_next(self) -> SentCallback | None:
        """Send the next queued callback (``manual`` delivery); ``None`` when none."""
        with self._cond:
            if not self._queue:
                return None
            item = heapq.heappop(self._queue)[2]
        return self._send(item, self._sender)

    def deliver_all(self) -> list[SentCallback]:
        """Send every queued callback, in the planned order (delays are ignored)."""
        sent: list[SentCallback] = []
        while (record := self.deliver_next()) is not None:
            sent.append(record)
        return sent

    async def adeliver_all(self) -> list[SentCallback]:
        """`deliver_all` with the async sender (through ``handler.ahandle``)."""
        sent: list[SentCallback] = []
        async with self._async_sender() as sender:
            while True:
                with self._cond:
                    if not self._queue:
                        return sent
                    item = heapq.heappop(self._queue)[2]
                sent.append(await self._asend(item, sender))

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Block until no callback is queued or in flight (``background`` delivery).

        Raises `TimeoutError` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(self._queue)} callbacks still queued")
                self._cond.wait(remaining)

    def close(self) -> None:
        """Stop the background workers and close the callback client the fake made."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for worker in self._workers:
            worker.join()
        if self._owns_client:
            self._callback_client.close()

    def __enter__(self) -> FakeGenerator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- answering --------------------------------------------------------------------

    def _answer(self, request: httpx.Request) -> tuple[httpx.Response, list[_Planned]]:
        segments = [unquote(s) for s in request.url.raw_path.split(b"?")[0].decode().split("/")]
        segments = [s for s in segments if s]
        method = request.method
        if method == "POST" and segments == ["jobs"]:
            return self._submit(request)
        if len(segments) == 2 and segments[0] == "jobs" and method == "GET":
            return self._status(segments[1]), []
        if len(segments) == 3 and segments[::2] == ["jobs", "cancel"] and method == "POST":
            return self._cancel(segments[1])
        return _json_response(404, {"error": f"no route for {method} {request.url.path}"}), []

    def _submit(self, request: httpx.Request) -> tuple[httpx.Response, list[_Planned]]:
        try:
            data = json.loads(request.content)
        except ValueError:  # UnicodeDecodeError included
            return _json_response(400, {"error": "the body is not JSON"}), []
        if not isinstance(data, dict):
            return _json_response(400, {"error": "the body is not a JSON object"}), []
        job_id, callback_url = data.get("job_id"), data.get("callback_url")
        if not isinstance(job_id, str) or not job_id:
            return _json_response(400, {"error": "job_id is required"}), []
        if not isinstance(callback_url, str) or not _is_http_url(callback_url):
            return _json_response(400, {"error": "callback_url must be an http(s) URL"}), []
        kind = data.get("kind")
        submission = Submission(
            job_id=job_id,
            callback_url=callback_url,
            kind=kind if isinstance(kind, str) else None,
            input=data.get("input"),
            idempotency_key=request.headers.get("idempotency-key"),
            headers=dict(request.headers),
        )
        with self._cond:
            self.submissions.append(submission)
            if self._failures:
                status, headers, body = self._failures.pop(0)
                return _json_response(status, body, headers), []
            job = self._jobs.get(job_id)
            if job is not None:  # the same job again: the contract makes retries safe
                return _json_response(200, self._accepted(job)), []
            script = self._scripts.pop(job_id, self._script)
        steps = list(script(submission))  # app code: run it outside the lock
        with self._cond:
            job = self._jobs.get(job_id)
            if job is not None:  # a concurrent retry of the same submit won
                return _json_response(200, self._accepted(job)), []
            own_id = f"fake_{uuid.uuid4().hex}"
            job = _FakeJob(
                job_id=job_id,
                wire_id=own_id if self.mismatched_ids else job_id,
                remote_id=own_id,
                callback_url=callback_url,
                steps=steps,
            )
            self._jobs[job_id] = job
            self._by_wire_id[job.wire_id] = job
            self._route_ids[str(httpx.URL(callback_url))] = job_id
            planned = self._plan(job, list(enumerate(steps)))
            inline = self._enqueue(planned)
            answer = self._accepted(job)
        return _json_response(202, answer), inline

    @staticmethod
    def _accepted(job: _FakeJob) -> dict[str, Any]:
        return {"job_id": job.wire_id, "remote_id": job.remote_id, "status": "submitted"}

    def _status(self, job_id: str) -> httpx.Response:
        with self._cond:
            job = self._jobs.get(job_id) or self._by_wire_id.get(job_id)
            if job is None:
                return _json_response(404, {"error": f"no job {job_id!r}"})
            state = job.state()
            body = job.payload(state or JobUpdate(JobStatus.SUBMITTED))
        return _json_response(200, body)

    def _cancel(self, job_id: str) -> tuple[httpx.Response, list[_Planned]]:
        with self._cond:
            job = self._jobs.get(job_id) or self._by_wire_id.get(job_id)
            if job is None:
                return _json_response(404, {"error": f"no job {job_id!r}"}), []
            state = job.state()
            if state is not None and state.status.terminal:
                return _json_response(200, job.payload(state)), []
            job.canceled = True
            # Whatever was still to come for this job will never happen now.
            self._queue = [entry for entry in self._queue if entry[2].job_id != job.job_id]
            heapq.heapify(self._queue)
            self._cond.notify_all()
            update = JobUpdate(JobStatus.CANCELED)
            inline = self._enqueue(self._plan(job, [(-1, update)], chaos=False))
            body = job.payload(update)
        return _json_response(200, body), inline

    # -- planning and sending ---------------------------------------------------------

    def _plan(
        self, job: _FakeJob, steps: list[tuple[int, JobUpdate]], *, chaos: bool = True
    ) -> list[_Planned]:
        """The callbacks for ``steps``, with the chaos applied (called under the lock)."""
        rng, settings = self._rng, self.chaos
        items = [(index, update, f"msg_{uuid.uuid4().hex}") for index, update in steps]
        if chaos:
            for i in range(len(items) - 1):
                if rng.random() < settings.reorder:
                    items[i], items[i + 1] = items[i + 1], items[i]
            for i in range(len(items) - 1, -1, -1):
                if rng.random() < settings.duplicate:
                    items.insert(rng.randint(i + 1, len(items)), items[i])
        now = time.monotonic()
        planned = []
        for position, (index, update, msg_id) in enumerate(items):
            extra = rng.uniform(0, settings.delay) if chaos and settings.delay else 0.0
            due = now + position * self._step_interval + extra
            dropped = chaos and rng.random() < settings.drop
            payload = job.payload(update)
            planned.append(
                _Planned(due, job.job_id, job.callback_url, payload, msg_id, dropped, index)
            )
        return planned

    def _enqueue(self, planned: list[_Planned]) -> list[_Planned]:
        """Queue ``planned`` for later, or return it to be sent now (under the lock)."""
        if self.delivery == "before_answer":
            return planned
        for item in planned:
            due = item.due if self.delivery == "background" else 0.0
            heapq.heappush(self._queue, (due, next(self._order), item))
        if self.delivery == "background":
            self._start_workers()
            self._cond.notify_all()
        return []

    def _reached(self, item: _Planned) -> None:
        job = self._jobs[item.job_id]
        job.reached = max(job.reached, item.step)

    def _record(self, item: _Planned, report: DeliveryReport | None) -> SentCallback:
        record = SentCallback(item.job_id, item.payload, item.msg_id, item.dropped, report)
        with self._cond:
            self.callbacks.append(record)
        return record

    def _send(self, item: _Planned, sender: CallbackSender) -> SentCallback:
        with self._cond:
            self._reached(item)
        if item.dropped:
            log.debug("dropping callback %s for job %s", item.msg_id, item.job_id)
            return self._record(item, None)
        return self._record(item, sender.send(item.url, item.payload, msg_id=item.msg_id))

    async def _asend(self, item: _Planned, sender: AsyncCallbackSender) -> SentCallback:
        with self._cond:
            self._reached(item)
        if item.dropped:
            return self._record(item, None)
        report = await sender.send(item.url, item.payload, msg_id=item.msg_id)
        return self._record(item, report)

    def _make_sender(self, client: httpx.Client) -> CallbackSender:
        # Short backoff: a test waits for these retries.
        return CallbackSender(
            self.secret,
            http_client=client,
            max_attempts=self._sender_attempts,
            backoff=0.02,
            max_backoff=0.5,
        )

    @asynccontextmanager
    async def _async_sender(self) -> AsyncIterator[AsyncCallbackSender]:
        if self.handler is not None:
            client = httpx.AsyncClient(transport=httpx.MockTransport(self._ato_handler))
        else:
            client = httpx.AsyncClient(timeout=10.0)
        async with client:  # one client per batch: nothing to close on the fake later
            yield AsyncCallbackSender(
                self.secret,
                http_client=client,
                max_attempts=self._sender_attempts,
                backoff=0.02,
                max_backoff=0.5,
            )

    def _start_workers(self) -> None:
        if self._workers or self._closed:
            return
        for number in range(self._worker_count):
            worker = threading.Thread(
                target=self._work, name=f"fake-generator-{number}", daemon=True
            )
            self._workers.append(worker)
            worker.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    wait = self._queue[0][0] - time.monotonic() if self._queue else None
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._closed:
                    return
                item = heapq.heappop(self._queue)[2]
                self._in_flight += 1
            try:
                self._send(item, self._sender)
            except Exception:  # a test's bug must not kill the worker silently
                log.exception("callback %s for job %s failed", item.msg_id, item.job_id)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()

    # -- in-process delivery to a WebhookHandler ---------------------------------------

    def _route(self, request: httpx.Request) -> tuple[str | None, str | None]:
        with self._cond:
            job_id = self._route_ids.get(str(request.url))
        return job_id, request.url.params.get("token")

    def _to_handler(self, request: httpx.Request) -> httpx.Response:
        job_id, token = self._route(request)
        answer = self.handler.handle(request.headers, request.content, job_id=job_id, token=token)
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body)

    async def _ato_handler(self, request: httpx.Request) -> httpx.Response:
        job_id, token = self._route(request)
        answer = await self.handler.ahandle(
            request.headers, request.content, job_id=job_id, token=token
        )
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body)
