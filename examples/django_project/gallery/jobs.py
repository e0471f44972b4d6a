"""jobhook in the gallery: the store, the output keeper, the client, starting a
generation, notifying."""

from __future__ import annotations

import functools

import httpx
from django.conf import settings
from django.db import IntegrityError, transaction

from gallery.models import ImageGeneration, Notification
from jobhook import GeneratorClient, JobEvent
from jobhook.django import DjangoJobStore
from jobhook.outputs import FetchPolicy, LocalStorage, OutputKeeper

# The stub backend serves its pictures on loopback, which only development allows: the
# keeper may fetch from loopback only when the backend itself is there.
_on_loopback = httpx.URL(settings.GENERATOR_URL).host in ("127.0.0.1", "localhost")
#: Keeps each job's pictures in MEDIA_ROOT before the job may succeed
#: (``JOBHOOK["KEEPER"]`` names it; ``manage.py jobhook_keep`` runs it).
keeper = OutputKeeper(
    DjangoJobStore(),
    LocalStorage(settings.MEDIA_ROOT, base_url=f"{settings.APP_URL}{settings.MEDIA_URL}"),
    policy=FetchPolicy(allow_networks=["127.0.0.0/8"] if _on_loopback else ()),
)
#: The jobs, as the keeper guards them: a success waits until its pictures are kept.
store = keeper.store


@functools.cache
def client() -> GeneratorClient:
    """The client (``JOBHOOK["CLIENT"]`` names this function: the admin's resubmit and
    cancel actions and ``manage.py jobhook_reconcile`` use it)."""
    return GeneratorClient(
        store,
        settings.GENERATOR_URL,
        callback_url=f"{settings.APP_URL}/webhooks/jobhook/{{job_id}}",
        status_path="/jobs/{job_id}",
        cancel_path="/jobs/{job_id}/cancel",
    )


def start(prompt: str, author_id: str) -> ImageGeneration:
    """The app's row and its job, committed together; then the job is submitted by id."""
    with transaction.atomic():
        job = store.create({"prompt": prompt}, kind="image", owner_id=author_id)
        generation = ImageGeneration.objects.create(
            prompt=prompt, author_id=author_id, job_id=job.id
        )
    # Committed: now the backend may hear of it (and call back at once).
    client().resubmit(job.id)
    return generation


def notify(event: JobEvent) -> None:
    """``manage.py jobhook_consume notify``: one notification per finished job."""
    if not event.status.terminal or event.owner_id is None:
        return
    job = store.get(event.job_id)
    text = f"Your image “{job.input['prompt']}” is {job.status.value}."
    try:
        with transaction.atomic():
            Notification.objects.create(user_id=event.owner_id, text=text, job_id=job.id)
    except IntegrityError:
        pass  # made already: the consumer runs at least once
