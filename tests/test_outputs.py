"""`jobhook.outputs`: a success is told only once its files are kept, and what is kept
is fetched safely."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from jobhook import (
    GeneratorClient,
    JobStatus,
    JobUpdate,
    Outcome,
    WebhookHandler,
    backends,
)
from jobhook.exceptions import DeadLetterNotFoundError, OutputError, ValidationError
from jobhook.outputs import (
    FetchPolicy,
    LocalStorage,
    OutputKeeper,
    any_url,
    fal_files,
    fetch,
    files_for,
)
from jobhook.testing import FakeGenerator, Scripts, signed_delivery
from jobhook.testing._png import png_for

from .conftest import build_store, drop_holds

LOOPBACK = FetchPolicy(allow_networks=["127.0.0.0/8"])
TOKENS = "outputs-token-secret"
HOOK = "https://app.example/webhooks/jobhook/{job_id}"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Clock:
    """An injectable clock: seconds since the epoch, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        "postgres",
        "mariadb",
        "django-sqlite",
        "django-postgres",
        "django-mariadb",
    ]
)
def plain_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    store, close = build_store(request.param, tmp_path)
    yield store
    drop_holds(store)
    close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "kept", base_url="https://app.example/files/")


@pytest.fixture
def keeper(plain_store: Any, storage: LocalStorage, clock: Clock) -> Iterator[OutputKeeper]:
    keeper = OutputKeeper(
        plain_store, storage, policy=LOOPBACK, clock=clock, retry_after=60, create_schema=True
    )
    yield keeper
    keeper.close()


@pytest.fixture
def files() -> Iterator[tuple[FakeGenerator, str]]:
    """A fake backend serving its pictures over loopback HTTP, and its URL."""
    with FakeGenerator() as fake, fake.serve() as url:
        yield fake, url


def succeeded_events(store: Any, job_id: str) -> list[Any]:
    return [
        e for e in store.events(limit=1000) if e.job_id == job_id and e.status.value == "succeeded"
    ]


def kept_bytes(storage: LocalStorage, url: str) -> bytes:
    assert url.startswith(storage.base_url or "")
    return storage.get(url[len(storage.base_url or "") :])


# --- the flow: held, kept, then succeeded -----------------------------------------------


def test_a_replicate_output_that_expires_is_kept_before_anyone_hears_of_the_success(
    keeper: OutputKeeper, storage: LocalStorage, files: tuple[FakeGenerator, str]
) -> None:
    file_host, files_url = files
    store = keeper.store
    profile = backends.Replicate("r8_test", model="o/n")
    heard: list[tuple[str, Any]] = []
    keeper_heard: list[tuple[str, Any]] = []
    keeper._listeners = (lambda event, job: keeper_heard.append((event.status.value, job.output)),)
    with FakeGenerator(impersonate="replicate") as fake:
        handler = WebhookHandler(
            store,
            backend=profile,
            secret=fake.secret,
            token_secret=TOKENS,
            listeners=[lambda event, job: heard.append((event.status.value, job.output))],
        )
        fake.handler = handler
        http = httpx.Client(transport=fake.transport)
        client = GeneratorClient(
            store, profile, callback_url=HOOK, token_secret=TOKENS, http_client=http
        )
        fake.set_script("job-1", Scripts.pictures(files_url, count=2))
        client.submit({"prompt": "a red fox"}, job_id="job-1")
        fake.deliver_all()
        original = [f"{files_url}/files/job-1/1.png", f"{files_url}/files/job-1/2.png"]

        # The success is held: answered, durable, and told to no one.
        held = store.get("job-1")
        assert held.status is JobStatus.RUNNING
        assert succeeded_events(store, "job-1") == []
        assert "succeeded" not in [status for status, _ in heard]
        assert keeper.kept("job-1").state == "keeping"
        assert keeper.kept("job-1").original_output == {"images": original}
        # A refresh that meets the same success holds nothing twice.
        assert client.refresh("job-1").status is JobStatus.RUNNING

        assert keeper.run_once() == 1
        http.close()
        client.close()

    file_host.expire_files()  # a minute later, the provider's files are gone
    assert httpx.get(original[0]).status_code == 404

    done = store.get("job-1")
    assert done.status is JobStatus.SUCCEEDED
    urls = done.output["images"]
    assert urls == [
        "https://app.example/files/job-1/0.png",
        "https://app.example/files/job-1/1.png",
    ]
    for n, url in enumerate(urls, start=1):
        data = kept_bytes(storage, url)
        assert data == png_for(f"job-1/{n}.png")
        assert data.startswith(PNG_SIGNATURE)
    assert len(succeeded_events(store, "job-1")) == 1
    assert keeper_heard == [("succeeded", {"images": urls})]
    record = keeper.kept("job-1")
    assert record.state == "kept"
    assert [f.source for f in record.files] == original
    assert [f.url for f in record.files] == urls
    assert record.files[0].content_type == "image/png"
    assert record.files[0].sha256 == hashlib.sha256(png_for("job-1/1.png")).hexdigest()
    assert record.files[0].size == len(png_for("job-1/1.png"))
    assert keeper.run_once() == 0  # nothing left to do


def test_a_cog_data_uri_is_kept_as_a_file(keeper: OutputKeeper, storage: LocalStorage) -> None:
    store = keeper.store
    profile = backends.Cog("http://cog.invalid")
    with FakeGenerator(impersonate="cog", script=Scripts.pictures()) as fake:
        fake.handler = WebhookHandler(store, backend=profile, token_secret=TOKENS)
        http = httpx.Client(transport=fake.transport)
        client = GeneratorClient(
            store, profile, callback_url=HOOK, token_secret=TOKENS, http_client=http
        )
        client.submit({"prompt": "a fox"}, job_id="cog-1")
        fake.deliver_all()
        client.close()
        http.close()
    inline = keeper.kept("cog-1").original_output["images"][0]
    assert inline.startswith("data:image/png;base64,")
    assert store.get("cog-1").status is JobStatus.RUNNING
    keeper.run_once()
    done = store.get("cog-1")
    assert done.status is JobStatus.SUCCEEDED
    [url] = done.output["images"]
    assert kept_bytes(storage, url) == base64.b64decode(inline.split(",", 1)[1])
    assert keeper.kept("cog-1").files[0].source == "data:image/png;base64"
    assert len(succeeded_events(store, "cog-1")) == 1


def test_a_success_without_files_and_other_updates_pass_straight_through(
    keeper: OutputKeeper,
) -> None:
    store = keeper.store
    store.create({}, job_id="plain")
    running = store.apply("plain", JobUpdate(JobStatus.RUNNING, progress=10), delivery_id="d1")
    assert running.event is not None
    done = store.apply("plain", JobUpdate(JobStatus.SUCCEEDED, output={"text": "hi"}))
    assert done.outcome is Outcome.APPLIED
    assert done.job.status is JobStatus.SUCCEEDED
    assert keeper.kept("plain") is None


def test_a_repeated_delivery_of_a_held_success_is_a_duplicate(
    keeper: OutputKeeper, files: tuple[FakeGenerator, str]
) -> None:
    _, url = files
    store = keeper.store
    store.create({}, job_id="j")
    update = JobUpdate(JobStatus.SUCCEEDED, output=[f"{url}/files/j/1.png"])
    first = store.apply("j", update, delivery_id="d-1")
    again = store.apply("j", update, delivery_id="d-1")
    assert (first.outcome, again.outcome) == (Outcome.APPLIED, Outcome.DUPLICATE)
    assert first.event is None
    keeper.run_once()
    assert store.get("j").status is JobStatus.SUCCEEDED
    # After the success, the sender's retry is the store's duplicate.
    assert store.apply("j", update, delivery_id="d-1").outcome is Outcome.DUPLICATE
    assert len(succeeded_events(store, "j")) == 1


def test_a_success_applied_before_a_crash_is_kept_when_the_keeper_comes_back(
    keeper: OutputKeeper,
    files: tuple[FakeGenerator, str],
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A keeper that dies between applying a success (sent without a delivery id) and
    recording it finds on its next round that the job already holds that success:
    the hold is kept, not dropped, and the success was told once."""
    _, url = files
    store = keeper.store
    store.create({}, job_id="j")
    store.apply("j", JobUpdate(JobStatus.SUCCEEDED, output=[f"{url}/files/j/1.png"]))
    holds = keeper._holds
    save = holds.save

    def dies_after_the_apply(job_id: str, **fields: Any) -> None:
        if "state" in fields:
            raise RuntimeError("killed")
        save(job_id, **fields)

    monkeypatch.setattr(holds, "save", dies_after_the_apply)
    assert keeper.run_once() == 0  # the round failed after the apply
    assert store.get("j").status is JobStatus.SUCCEEDED
    monkeypatch.setattr(holds, "save", save)
    clock.now += 3600  # the retry is due
    assert keeper.run_once() == 1
    assert keeper.kept("j").state == "kept"
    assert len(succeeded_events(store, "j")) == 1


def test_a_held_success_for_a_job_canceled_meanwhile_is_dropped(
    keeper: OutputKeeper, files: tuple[FakeGenerator, str]
) -> None:
    _, url = files
    store = keeper.store
    store.create({}, job_id="j")
    store.apply("j", JobUpdate(JobStatus.SUCCEEDED, output=[f"{url}/files/j/1.png"]))
    store.apply("j", JobUpdate(JobStatus.CANCELED))
    keeper.run_once()
    assert store.get("j").status is JobStatus.CANCELED
    assert keeper.kept("j").state == "dropped"


def test_the_webhook_answers_200_for_a_held_success(
    keeper: OutputKeeper, files: tuple[FakeGenerator, str]
) -> None:
    _, url = files
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    handler = WebhookHandler(keeper.store, secret=secret)
    keeper.store.create({}, job_id="w")
    payload = {"job_id": "w", "status": "succeeded", "output": {"images": [f"{url}/files/w/1.png"]}}
    headers, body = signed_delivery(secret, payload)
    answer = handler.handle(headers, body)
    assert answer.status == 200
    assert keeper.store.get("w").status is JobStatus.PENDING
    assert handler.handle(headers, body).status == 200  # the sender's retry
    keeper.run_once()
    assert keeper.store.get("w").status is JobStatus.SUCCEEDED


# --- failures: visible, never a silent success -------------------------------------------


def test_an_expired_file_fails_the_job_as_output_not_kept(
    keeper: OutputKeeper, files: tuple[FakeGenerator, str]
) -> None:
    fake, url = files
    store = keeper.store
    store.create({}, job_id="late")
    store.apply("late", JobUpdate(JobStatus.SUCCEEDED, output=[f"{url}/files/late/1.png"]))
    fake.expire_files()
    keeper.run_once()
    job = store.get("late")
    assert job.status is JobStatus.FAILED
    assert job.error.code == "output_not_kept"
    assert "404" in job.error.message
    assert keeper.kept("late").state == "failed"
    assert succeeded_events(store, "late") == []


class Unavailable(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[type[BaseHTTPRequestHandler]], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(handler: type[BaseHTTPRequestHandler]) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_file_host_that_keeps_failing_is_retried_then_the_job_fails(
    plain_store: Any, storage: LocalStorage, clock: Clock, serve: Any
) -> None:
    url = serve(Unavailable)
    keeper = OutputKeeper(
        plain_store,
        storage,
        policy=LOOPBACK,
        clock=clock,
        max_attempts=3,
        retry_after=60,
        create_schema=True,
    )
    store = keeper.store
    store.create({}, job_id="flaky")
    store.apply("flaky", JobUpdate(JobStatus.SUCCEEDED, output=[f"{url}/x.png"]))
    assert keeper.run_once() == 0
    assert keeper.kept("flaky").attempts == 1
    assert "503" in (keeper.kept("flaky").last_error or "")
    assert keeper.run_once() == 0  # not due yet
    assert keeper.kept("flaky").attempts == 1
    clock.now += 60
    keeper.run_once()
    assert not store.get("flaky").terminal
    assert keeper.kept("flaky").attempts == 2
    clock.now += 120
    assert keeper.run_once() == 1
    job = store.get("flaky")
    assert job.status is JobStatus.FAILED
    assert job.error.code == "output_not_kept"
    keeper.close()


# --- which values are files ---------------------------------------------------------------


def test_files_are_found_per_backend_profile() -> None:
    replicate = ["https://r.example/1.png", "https://r.example/2.png"]
    assert any_url(replicate) == [(0,), (1,)]
    assert any_url("data:image/png;base64,AAAA") == [()]
    fal = {"images": [{"url": "https://fal.example/a.png", "width": 4}], "prompt": "https://x"}
    assert fal_files(fal) == [("images", 0, "url")]
    assert files_for(backends.Fal("fal-ai/flux/dev", "key")) is fal_files
    assert files_for(backends.Cog("http://cog")) is any_url
    assert any_url({"text": "done", "seed": 3}) == []


def test_a_custom_finder_decides_which_values_are_files(
    plain_store: Any, storage: LocalStorage, files: tuple[FakeGenerator, str]
) -> None:
    _, url = files
    only_cover = OutputKeeper(
        plain_store,
        storage,
        policy=LOOPBACK,
        files=lambda output: [("cover",)],
        create_schema=True,
    )
    store = only_cover.store
    store.create({}, job_id="c")
    link = "https://example.org/article"
    output = {"cover": f"{url}/files/c/1.png", "source": link}
    store.apply("c", JobUpdate(JobStatus.SUCCEEDED, output=output))
    only_cover.run_once()
    done = store.get("c").output
    assert done["source"] == link
    assert done["cover"].endswith("/c/0.png")
    only_cover.close()


# --- safety: addresses, schemes, redirects, sizes, credentials ---------------------------


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(follow_redirects=False, trust_env=False) as client:
        yield client


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/secret.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x.png",
        "http://10.1.2.3/x.png",
        "http://192.168.0.1/x.png",
        "file:///etc/passwd",
        "ftp://example.org/x.png",
        "https://user:password@example.org/x.png",
    ],
)
def test_private_addresses_other_schemes_and_credentials_are_refused(
    url: str, http: httpx.Client
) -> None:
    with pytest.raises(OutputError) as refused:
        fetch(url, FetchPolicy(), http)
    assert refused.value.permanent


def test_every_address_a_name_resolves_to_must_be_public(http: httpx.Client) -> None:
    policy = FetchPolicy(resolve=lambda host, port: ["93.184.216.34", "10.0.0.7"])
    with pytest.raises(OutputError, match=r"10\.0\.0\.7"):
        fetch("https://files.example/x.png", policy, http)


def test_a_job_pointing_at_loopback_fails_when_loopback_is_not_allowed(
    plain_store: Any, storage: LocalStorage, files: tuple[FakeGenerator, str]
) -> None:
    fake, url = files
    strict = OutputKeeper(plain_store, storage, create_schema=True)
    store = strict.store
    store.create({}, job_id="ssrf")
    store.apply("ssrf", JobUpdate(JobStatus.SUCCEEDED, output=[f"{url}/files/ssrf/1.png"]))
    strict.run_once()
    job = store.get("ssrf")
    assert job.status is JobStatus.FAILED
    assert job.error.code == "output_not_kept"
    assert fake.file_requests == []  # refused before any request left
    strict.close()


def redirecting_to(target: str) -> type[BaseHTTPRequestHandler]:
    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("location", target)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    return Redirect


@pytest.mark.parametrize(
    "target",
    ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.2:9/x.png", "file:///etc/passwd"],
)
def test_a_redirect_to_a_refused_address_is_refused(
    target: str, serve: Any, http: httpx.Client
) -> None:
    url = serve(redirecting_to(target))
    only_this_host = FetchPolicy(allow_networks=["127.0.0.1/32"])
    with pytest.raises(OutputError) as refused:
        fetch(f"{url}/start.png", only_this_host, http)
    assert refused.value.permanent


def test_redirects_are_followed_to_allowed_hosts(
    serve: Any, files: tuple[FakeGenerator, str], http: httpx.Client
) -> None:
    _, files_url = files
    url = serve(redirecting_to(f"{files_url}/files/r/1.png"))
    fetched = fetch(f"{url}/start", LOOPBACK, http)
    assert fetched.data == png_for("r/1.png")
    assert fetched.content_type == "image/png"


def test_no_credentials_reach_a_file_host(
    serve: Any, files: tuple[FakeGenerator, str], plain_store: Any, storage: LocalStorage
) -> None:
    fake, files_url = files

    class SetsACookie(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("set-cookie", "session=secret; Path=/")
            self.send_header("location", f"{files_url}/files/c/1.png")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    url = serve(SetsACookie)
    keeper = OutputKeeper(plain_store, storage, policy=LOOPBACK, create_schema=True)
    store = keeper.store
    store.create({}, job_id="c")
    store.apply("c", JobUpdate(JobStatus.SUCCEEDED, output=[f"{url}/a", f"{url}/b"]))
    keeper.run_once()
    assert store.get("c").status is JobStatus.SUCCEEDED
    assert len(fake.file_requests) == 2
    for request in fake.file_requests:
        assert "cookie" not in request.headers
        assert "authorization" not in request.headers
    keeper.close()


def test_files_over_the_size_limit_are_refused(
    files: tuple[FakeGenerator, str], http: httpx.Client
) -> None:
    _, url = files
    small = FetchPolicy(max_bytes=100, allow_networks=["127.0.0.0/8"])
    with pytest.raises(OutputError, match="over 100 bytes") as refused:
        fetch(f"{url}/files/big/1.png", small, http)
    assert refused.value.permanent
    inline = "data:application/octet-stream;base64," + base64.b64encode(b"x" * 200).decode()
    with pytest.raises(OutputError, match="over 100 bytes"):
        fetch(inline, small, http)


def test_a_data_uri_records_its_content_type_and_checksum(http: httpx.Client) -> None:
    fetched = fetch("data:text/plain;charset=utf-8,hello%20there", FetchPolicy(), http)
    assert (fetched.data, fetched.content_type) == (b"hello there", "text/plain")
    assert fetched.sha256 == hashlib.sha256(b"hello there").hexdigest()


def test_local_storage_refuses_keys_that_leave_its_directory(storage: LocalStorage) -> None:
    for key in ["../x", "a/../../x", "/etc/passwd", "", "a//b"]:
        with pytest.raises(ValueError, match="not a storage key"):
            storage.put(key, b"x", "text/plain")


# --- https: the request goes to the checked address, TLS checks the host name ------------


def _certificate(name: str, directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for ``name``: (CA cert, cert, key) PEM files."""
    x509 = pytest.importorskip("cryptography.x509")
    from datetime import datetime, timedelta, timezone

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(timezone.utc)

    def build(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build("jobhook test CA", ca_key, "jobhook test CA", ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build(name, key, "jobhook test CA", ca_key, False)
    paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class Pictures(BaseHTTPRequestHandler):
    hosts: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Pictures.hosts.append(self.headers.get("host", ""))
        data = png_for(self.path)
        self.send_response(200)
        self.send_header("content-type", "image/png")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("certified", "fetched"), [("files.test", True), ("other.test", False)])
def test_https_goes_to_the_checked_address_and_verifies_the_host_name(
    tmp_path: Path, certified: str, fetched: bool
) -> None:
    import ssl

    ca, cert, key = _certificate(certified, tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Pictures)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    port = server.server_address[1]
    resolved: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["127.0.0.1"]

    policy = FetchPolicy(allow_networks=["127.0.0.0/8"], resolve=resolve)
    trusting = ssl.create_default_context(cafile=str(ca))
    Pictures.hosts.clear()
    try:
        with httpx.Client(verify=trusting, follow_redirects=False, trust_env=False) as client:
            url = f"https://files.test:{port}/a.png"
            if fetched:
                assert fetch(url, policy, client).data == png_for("/a.png")
                assert Pictures.hosts == [f"files.test:{port}"]
            else:
                with pytest.raises(OutputError) as failed:
                    fetch(url, policy, client)
                assert "certificate" in str(failed.value).lower()
                assert Pictures.hosts == []
        assert resolved == ["files.test"]
    finally:
        server.shutdown()
        server.server_close()


def test_an_openai_image_generation_result_is_kept_as_a_file(
    plain_store: Any, storage: LocalStorage
) -> None:
    keeper = OutputKeeper(
        plain_store, storage, backend=backends.OpenAI("sk-test", model="gpt-image-1")
    )
    keeper.create_schema()
    store = keeper.store
    store.create({}, job_id="oa")
    picture = png_for("openai")
    output = [
        {
            "type": "image_generation_call",
            "id": "ig_1",
            "result": base64.b64encode(picture).decode(),
        },
        {"type": "message", "content": [{"type": "output_text", "text": "here it is"}]},
    ]
    assert files_for("openai")(output) == [(0, "result")]
    store.apply("oa", JobUpdate(JobStatus.SUCCEEDED, output=output))
    assert store.get("oa").status is JobStatus.PENDING
    keeper.run_once()
    done = store.get("oa").output
    assert done[0]["result"] == "https://app.example/files/oa/0.png"
    assert done[1] == output[1]
    assert kept_bytes(storage, done[0]["result"]) == picture
    assert keeper.kept("oa").files[0].source == "base64"
    keeper.close()


def test_a_success_the_reconciler_finds_by_polling_is_held_too(
    keeper: OutputKeeper, files: tuple[FakeGenerator, str]
) -> None:
    from datetime import timedelta

    from jobhook import Reconciler
    from jobhook.testing import Chaos

    _, files_url = files
    secret = "whsec_" + base64.b64encode(b"r" * 32).decode()
    store = keeper.store
    lossy = FakeGenerator(secret, script=Scripts.pictures(files_url), chaos=Chaos(drop=1.0))
    with lossy:
        lossy.handler = WebhookHandler(store, secret=secret)
        http = httpx.Client(transport=lossy.transport)
        client = GeneratorClient(
            store,
            "http://fake.invalid",
            callback_url=HOOK,
            status_path=FakeGenerator.status_path,
            http_client=http,
        )
        job = client.submit({"prompt": "lost"}, job_id="lost-1")
        lossy.deliver_all()  # every webhook is lost
        assert store.get(job.id).status is JobStatus.SUBMITTED
        reconciler = Reconciler(
            store, client, stale_after=timedelta(microseconds=1), give_up_after=timedelta(hours=1)
        )
        reconciler.run_once()
        client.close()
        http.close()
    assert store.get(job.id).status is not JobStatus.SUCCEEDED  # polled, and held
    assert keeper.kept(job.id).state == "keeping"
    assert keeper.run_once() == 1
    done = store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED
    assert done.output == {"images": ["https://app.example/files/lost-1/0.png"]}


# --- dead letters and the stores that are not supported -----------------------------------


def test_a_success_replayed_from_a_dead_letter_is_held_and_kept(
    keeper: OutputKeeper, storage: LocalStorage, files: tuple[FakeGenerator, str]
) -> None:
    _, url = files
    store = keeper.store
    secret = "whsec_" + base64.b64encode(b"d" * 32).decode()
    handler = WebhookHandler(store, secret=secret)
    original = f"{url}/files/early/1.png"
    payload = {"job_id": "early", "status": "succeeded", "output": {"images": [original]}}
    headers, body = signed_delivery(secret, payload)
    assert handler.handle(headers, body).status == 404  # no such job yet: a dead letter
    [letter] = store.dead_letters()
    store.create({}, job_id="early")

    replayed = store.replay_dead_letter(letter.id)
    assert replayed.outcome is Outcome.APPLIED
    assert replayed.event is None
    assert store.get("early").status is JobStatus.PENDING
    assert succeeded_events(store, "early") == []
    assert store.replay_dead_letter(letter.id).outcome is Outcome.DUPLICATE

    assert keeper.run_once() == 1
    done = store.get("early")
    assert done.status is JobStatus.SUCCEEDED
    assert done.output == {"images": ["https://app.example/files/early/0.png"]}
    assert kept_bytes(storage, done.output["images"][0]) == png_for("early/1.png")
    assert keeper.kept("early").original_output == {"images": [original]}
    assert len(succeeded_events(store, "early")) == 1
    assert store.dead_letters() == []  # marked replayed once the success was applied
    with pytest.raises(DeadLetterNotFoundError):
        store.replay_dead_letter(letter.id + 100)


def test_a_dead_letter_for_a_job_still_unknown_stays_a_dead_letter(
    keeper: OutputKeeper, files: tuple[FakeGenerator, str]
) -> None:
    _, url = files
    store = keeper.store
    update = JobUpdate(JobStatus.SUCCEEDED, output=[f"{url}/files/nobody/1.png"])
    letter = store.add_dead_letter("nobody", update, delivery_id="d-9")
    assert store.replay_dead_letter(letter.id).outcome is Outcome.NOT_FOUND
    assert keeper.kept("nobody") is None
    assert [d.id for d in store.dead_letters()] == [letter.id]


def test_the_async_keeper_refuses_a_django_store_and_names_outputkeeper(
    storage: LocalStorage, tmp_path: Path
) -> None:
    pytest.importorskip("django")
    from jobhook.outputs import AsyncOutputKeeper

    django_store, close = build_store("django-sqlite", tmp_path)
    try:
        with pytest.raises(ValidationError, match="use OutputKeeper") as refused:
            AsyncOutputKeeper(django_store, storage)
        assert "DjangoJobStore" in str(refused.value)
    finally:
        close()
