"""`FakeGenerator`: a generator backend for tests, in the wire shapes of jobhook's
contract or of a provider it impersonates (Cog, Replicate, fal, RunPod, OpenAI).

The fake's state (jobs, planned callbacks, records) sits behind one lock; requests
reach it through `FakeGenerator.handle_request` (an httpx transport or the loopback
server); the impersonated backend's `Wire` reads them and renders answers and
callbacks; callbacks leave through a `Courier`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal

import attrs
import httpx

from jobhook._models import JobStatus, JobUpdate
from jobhook.sender import DeliveryReport
from jobhook.testing._delivery import Courier
from jobhook.testing._planning import Planned, plan
from jobhook.testing._png import png_for
from jobhook.testing._scripts import Chaos, Script, Scripts, Submission
from jobhook.testing._wires import (
    FakeJob,
    JobIdFromUrl,
    json_response,
    last_path_segment,
    make_wire,
)
from jobhook.testing._wires._fal import FalWire

__all__ = ["FakeGenerator", "SentCallback"]

log = logging.getLogger("jobhook.testing")

DeliveryMode = Literal["manual", "background", "before_answer"]
Impersonation = Literal["jobhook", "cog", "replicate", "fal", "runpod", "openai"]


@attrs.frozen
class SentCallback:
    """One callback the fake sent, or lost on purpose (``dropped``).

    ``payload`` is the body in the impersonated backend's shape; ``msg_id`` its
    ``webhook-id`` where the backend sends one, else the fake's own id for it (a
    duplicate carries the same).
    """

    job_id: str
    payload: dict[str, Any]
    msg_id: str
    dropped: bool
    report: DeliveryReport | None


class FakeGenerator:
    """A generator backend for tests. By default it keeps jobhook's contract: ``POST
    /jobs``, ``GET /jobs/{job_id}`` and ``POST /jobs/{job_id}/cancel``, calling back
    signed with ``secret`` (a ``whsec_…`` secret, made up when not given).

    ``impersonate`` makes it another backend's wire instead, the ``name`` of the
    `jobhook.backends` profile the app uses (``backend.name``): ``"cog"``,
    ``"replicate"``, ``"fal"``, ``"runpod"`` or ``"openai"``. It then takes that
    profile's requests, assigns ids where the provider does, answers status, result and
    cancel requests, and calls back in the provider's shapes, signed as it signs:
    Replicate and OpenAI with Standard Webhooks (``secret``), fal with ED25519
    (``secret`` is a 32-byte private key; `fal_jwks` is the matching JWKS), Cog and
    RunPod unsigned (no ``secret``). ``api_key``, when given, is the only key a hosted
    backend accepts (any key otherwise, never none). Hosted backends' callbacks name no
    job id: the fake reads the app's job id from the callback URL with
    ``job_id_from_url`` (by default its last path segment), as the app's webhook route
    does. OpenAI's thin events go to one project-wide ``webhook_url`` (or only to
    ``handler``, on a route without a job id); the fake reads the job id from the
    submit's ``metadata.jobhook_job_id``.

    Reach it in-process through `transport` / `async_transport`, or over loopback HTTP
    with `serve`. Each new job runs ``script`` (default `Scripts.success`; per job with
    `set_script`). ``delivery`` says when callbacks leave: ``"manual"`` (queued until
    `deliver_all` / `deliver_next`), ``"background"`` (``workers`` threads send them
    as they fall due) or ``"before_answer"`` (all of them, before the submit is
    answered: the race where the webhook wins). ``chaos`` duplicates, reorders, drops
    and delays callbacks. ``mismatched_ids=True`` answers and calls back with the
    fake's own job id: the bug jobhook exists to catch (jobhook's contract and Cog).

    Callbacks go to the submitted callback URL over HTTP (``callback_client``, by
    default a plain `httpx.Client`), or straight into ``handler`` (a `WebhookHandler`,
    also settable after construction) with the route's job id and the URL's
    ``token``. Whatever it impersonates, it serves the pictures `Scripts.pictures`
    names at ``GET /files/{job_id}/{n}.png`` (small PNGs), until `expire_files`.
    Thread-safe. Raises `ValueError` for options that do not fit together.
    """

    submit_path = "/jobs"
    status_path = "/jobs/{job_id}"
    cancel_path = "/jobs/{job_id}/cancel"

    def __init__(
        self,
        secret: str | bytes | None = None,
        *,
        impersonate: Impersonation = "jobhook",
        api_key: str | None = None,
        job_id_from_url: JobIdFromUrl | None = None,
        webhook_url: str | None = None,
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
        self._wire, self.secret = make_wire(
            impersonate,
            secret,
            api_key=api_key,
            job_id_from_url=job_id_from_url or last_path_segment,
            webhook_url=webhook_url,
        )
        if mismatched_ids and not self._wire.takes_job_id:
            raise ValueError(
                f"{impersonate} assigns its own ids (the job id travels in the callback "
                "URL): mismatched_ids= needs a backend that takes the app's job id"
            )
        self.impersonate: Impersonation = impersonate
        self.delivery: DeliveryMode = delivery
        self.chaos = chaos or Chaos()
        self.mismatched_ids = mismatched_ids
        self.handler = handler
        self.submissions: list[Submission] = []
        self.callbacks: list[SentCallback] = []
        self._script = script or Scripts.success()
        self._scripts: dict[str, Script] = {}
        self._jobs: dict[str, FakeJob] = {}  # the app's job id -> its latest job
        self._by_wire_id: dict[str, FakeJob] = {}
        self._taken: list[str] = []
        self._route_ids: dict[str, str] = {}
        self._queue: list[tuple[float, int, Planned]] = []
        self._order = itertools.count()
        self._failures: list[tuple[int, dict[str, str], Any]] = []
        self._rng = random.Random(self.chaos.seed)
        self._cond = threading.Condition()
        self._in_flight = 0
        self._closed = False
        self._workers: list[threading.Thread] = []
        self._worker_count = workers
        self._step_interval = step_interval
        self._courier = Courier(sender_attempts)
        self._callback_client = callback_client
        self._own_clients: dict[str, httpx.Client] = {}  # made here, closed by close()
        #: The requests for output files (``GET /files/...``) the fake received.
        self.file_requests: list[httpx.Request] = []
        self._files_expired = False

    def __repr__(self) -> str:
        shown = "" if self.impersonate == "jobhook" else f" impersonate={self.impersonate!r}"
        return f"<FakeGenerator{shown} jobs={len(self._taken)} delivery={self.delivery!r}>"

    @property
    def fal_jwks(self) -> dict[str, Any]:
        """The JWKS with the public key a fal fake signs with, for
        ``backends.Fal(..., jwks=fake.fal_jwks)``. `AttributeError` for other backends."""
        if not isinstance(self._wire, FalWire):
            raise AttributeError("only a fal fake (impersonate='fal') has a JWKS")
        return self._wire.jwks()

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
        if request.method == "GET" and request.url.path.startswith("/files/"):
            return self._file(request)
        response, planned = self._answer(request)
        for item in planned:
            self._send(item, self._http())
        return response

    async def ahandle_request(self, request: httpx.Request) -> httpx.Response:
        """Answer one request (async); ``before_answer`` callbacks are awaited first."""
        if request.method == "GET" and request.url.path.startswith("/files/"):
            return self._file(request)
        response, planned = self._answer(request)
        if planned:
            async with self._async_http() as http:
                for item in planned:
                    await self._asend(item, http)
        return response

    # -- output files -----------------------------------------------------------------

    def expire_files(self) -> None:
        """From now on answer 404 for every output file, as a provider does once its
        outputs expire (Replicate's after an hour)."""
        with self._cond:
            self._files_expired = True

    def _file(self, request: httpx.Request) -> httpx.Response:
        """``GET /files/{job_id}/{name}.png``: the job's picture (`Scripts.pictures`)."""
        with self._cond:
            self.file_requests.append(request)
            expired = self._files_expired
        name = request.url.path[len("/files/") :]
        if expired or not name.endswith(".png") or ".." in name.split("/"):
            return json_response(404, {"error": "no such file (outputs expire)"})
        return httpx.Response(200, headers={"content-type": "image/png"}, content=png_for(name))

    # -- scripting and inspection -----------------------------------------------------

    def set_script(self, job_id: str, script: Script) -> None:
        """Use ``script`` for the job submitted with ``job_id`` (before it is submitted;
        for hosted backends, the job id its callback URL names; for OpenAI, its
        ``metadata.jobhook_job_id``)."""
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
        ``Retry-After`` header, or Cog's 409 "at capacity") without taking the job."""
        body = json if json is not None else {"error": f"fake failure {status}"}
        with self._cond:
            self._failures.extend([(status, dict(headers or {}), body)] * times)

    def job_ids(self) -> list[str]:
        """The app's job ids the fake has taken, in order: one per job it runs (a
        hosted backend that gets a job twice runs it twice, and lists it twice)."""
        with self._cond:
            return list(self._taken)

    def final_status(self, job_id: str) -> JobStatus | None:
        """The status the job ends in, as the app reads the backend's report of it
        (fal reports a canceled request as an error: ``failed``); ``None`` when the
        script has no terminal step. Raises `KeyError` for a job the fake never took.
        """
        with self._cond:
            job = self._jobs[job_id]
            if job.canceled:
                return self._wire.reported(JobUpdate(JobStatus.CANCELED))
            last = job.steps[-1] if job.steps else None
        if last is None or not last.status.terminal:
            return None
        return self._wire.reported(last)

    def pending(self) -> int:
        """How many callbacks wait to be sent."""
        with self._cond:
            return sum(1 for _, _, item in self._queue if item.payload is not None)

    def deliver_next(self) -> SentCallback | None:
        """Send the next queued callback (``manual`` delivery); ``None`` when none.

        Steps the backend reports only through its status endpoint (fal's and RunPod's
        progress, RunPod's failures) happen on the way, without a callback.
        """
        while True:
            with self._cond:
                if not self._queue:
                    return None
                item = heapq.heappop(self._queue)[2]
            record = self._send(item, self._http())
            if record is not None:
                return record

    def deliver_all(self) -> list[SentCallback]:
        """Send every queued callback, in the planned order (delays are ignored)."""
        sent: list[SentCallback] = []
        while (record := self.deliver_next()) is not None:
            sent.append(record)
        return sent

    async def adeliver_all(self) -> list[SentCallback]:
        """`deliver_all` with the async sender (through ``handler.ahandle``)."""
        sent: list[SentCallback] = []
        async with self._async_http() as http:
            while True:
                with self._cond:
                    if not self._queue:
                        return sent
                    item = heapq.heappop(self._queue)[2]
                record = await self._asend(item, http)
                if record is not None:
                    sent.append(record)

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
        """Stop the background workers and close the callback clients the fake made."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for worker in self._workers:
            worker.join()
        with self._cond:
            clients, self._own_clients = list(self._own_clients.values()), {}
        for client in clients:
            client.close()

    def __enter__(self) -> FakeGenerator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- answering --------------------------------------------------------------------

    def _answer(self, request: httpx.Request) -> tuple[httpx.Response, list[Planned]]:
        wire = self._wire
        route = wire.route(request)
        if isinstance(route, httpx.Response):
            return route, []
        refused = wire.authorize(request)
        if refused is not None:
            return refused, []
        kind, key = route
        if kind == "submit":
            return self._submit(request)
        with self._cond:
            job = self._jobs.get(key) if wire.finds_by_job_id else None
            job = wire.find(job or self._by_wire_id.get(key), request)
            if kind == "status":
                return wire.status(job, request), []
            if kind == "result":
                return wire.result(job, request), []
            if job is None or job.ended():
                return wire.cancel(job, canceled=False), []
            inline = self._cancel(job)
            return wire.cancel(job, canceled=True), inline

    def _submit(self, request: httpx.Request) -> tuple[httpx.Response, list[Planned]]:
        wire = self._wire
        intake = wire.intake(request)
        if isinstance(intake, httpx.Response):
            return intake, []
        submission = intake.submission
        job_id = submission.job_id
        with self._cond:
            self.submissions.append(submission)
            if self._failures:
                status, headers, body = self._failures.pop(0)
                return json_response(status, body, headers), []
            job = self._jobs.get(job_id)
            if job is not None and wire.same_job(job):  # a retry the backend recognises
                return wire.accepted(job, new=False), []
            script = self._scripts.pop(job_id, self._script)
        steps = list(script(submission))  # app code: run it outside the lock
        with self._cond:
            job = self._jobs.get(job_id)
            if job is not None and wire.same_job(job):  # a concurrent retry won
                return wire.accepted(job, new=False), []
            own_id = intake.remote_id
            job = FakeJob(
                job_id=job_id,
                wire_id=own_id if self.mismatched_ids or not wire.takes_job_id else job_id,
                remote_id=own_id,
                callback_url=submission.callback_url,
                steps=steps,
                submission=submission,
                meta=intake.meta,
            )
            self._jobs[job_id] = job
            self._taken.append(job_id)
            self._by_wire_id[job.wire_id] = job
            if wire.route_names_job:
                self._route_ids[str(httpx.URL(submission.callback_url))] = job_id
            inline = self._enqueue(self._plan(job, list(enumerate(steps)), chaos=True))
            answer = wire.accepted(job, new=True)
        return answer, inline

    def _cancel(self, job: FakeJob) -> list[Planned]:
        """Cancel ``job`` now (under the lock); the cancel callback to send now, if any."""
        job.canceled = True
        # Whatever was still to come for this job will never happen now.
        self._queue = [entry for entry in self._queue if entry[2].job is not job]
        heapq.heapify(self._queue)
        self._cond.notify_all()
        return self._enqueue(self._plan(job, [(-1, JobUpdate(JobStatus.CANCELED))], chaos=False))

    def _plan(
        self, job: FakeJob, steps: list[tuple[int, JobUpdate]], *, chaos: bool
    ) -> list[Planned]:
        """`plan` with the fake's RNG, chaos and pace (called under the lock)."""
        odds = self.chaos if chaos else None
        return plan(
            job, steps, self._wire, rng=self._rng, chaos=odds, step_interval=self._step_interval
        )

    # -- planning and sending ---------------------------------------------------------

    def _enqueue(self, planned: list[Planned]) -> list[Planned]:
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

    def _reached(self, item: Planned) -> dict[str, Any] | None:
        """Move the job on to ``item``'s step; the payload to send, if any."""
        with self._cond:
            item.job.reached = max(item.job.reached, item.step)
        return item.payload

    def _record(
        self, item: Planned, payload: dict[str, Any], report: DeliveryReport | None
    ) -> SentCallback:
        record = SentCallback(item.job.job_id, payload, item.msg_id, item.dropped, report)
        with self._cond:
            self.callbacks.append(record)
        return record

    def _delivery(self, item: Planned, payload: dict[str, Any]) -> tuple[str, bytes, Any]:
        body = self._wire.encode(payload)

        def headers() -> dict[str, str]:
            return self._wire.headers(item.job, body, item.msg_id)

        return item.job.callback_url, body, headers

    def _send(self, item: Planned, http: httpx.Client) -> SentCallback | None:
        payload = self._reached(item)
        if payload is None:
            return None
        if item.dropped:
            log.debug("dropping callback %s for job %s", item.msg_id, item.job.job_id)
            return self._record(item, payload, None)
        url, body, headers = self._delivery(item, payload)
        report = self._courier.send(
            http, url, body, headers, msg_id=item.msg_id, retried=item.retried
        )
        return self._record(item, payload, report)

    async def _asend(self, item: Planned, http: httpx.AsyncClient) -> SentCallback | None:
        payload = self._reached(item)
        if payload is None:
            return None
        if item.dropped:
            return self._record(item, payload, None)
        url, body, headers = self._delivery(item, payload)
        report = await self._courier.asend(
            http, url, body, headers, msg_id=item.msg_id, retried=item.retried
        )
        return self._record(item, payload, report)

    def _own_client(self, name: str, **options: Any) -> httpx.Client:
        with self._cond:
            client = self._own_clients.get(name)
            if client is None:
                client = self._own_clients[name] = httpx.Client(**options)
            return client

    def _http(self) -> httpx.Client:
        """Where callbacks go now: the handler, the given client, or plain HTTP."""
        if self.handler is not None:
            return self._own_client("handler", transport=httpx.MockTransport(self._to_handler))
        if self._callback_client is not None:
            return self._callback_client
        return self._own_client("http", timeout=10.0)

    @asynccontextmanager
    async def _async_http(self) -> AsyncIterator[httpx.AsyncClient]:
        if self.handler is not None:
            client = httpx.AsyncClient(transport=httpx.MockTransport(self._ato_handler))
        else:
            client = httpx.AsyncClient(timeout=10.0)
        async with client:  # one client per batch: nothing to close on the fake later
            yield client

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
                self._send(item, self._http())
            except Exception:  # a test's bug must not kill the worker silently
                log.exception("callback %s for job %s failed", item.msg_id, item.job.job_id)
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
