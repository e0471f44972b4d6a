"""The ``JOBHOOK`` setting: what the view, the admin and the commands are built from.

```python
JOBHOOK = {
    "SECRET": env("JOBHOOK_WEBHOOK_SECRET"),      # Standard Webhooks secret(s)
    "TOKEN_SECRET": env("JOBHOOK_TOKEN_SECRET"),  # per-job callback tokens
    "DATABASE": "default",                         # the DATABASES alias of the jobs
    "CLIENT": "myapp.jobs.client",                 # a GeneratorClient, or a callable
    "CONSUMERS": {"notify": "myapp.jobs.notify"},  # outbox readers, by name
    "KEEPER": "myapp.jobs.keeper",                 # an OutputKeeper, or a callable
}
```

Every key is optional. ``CLIENT`` enables the admin's resubmit and cancel actions and
``manage.py jobhook_reconcile``; ``CONSUMERS`` names what ``manage.py
jobhook_consume <name>`` calls for each event; ``KEEPER`` is what ``manage.py
jobhook_keep`` runs, and its guarded store is then the one the webhook view, the
reconciler and the other commands use (a success waits until its files are kept).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from jobhook._models import JobEvent
from jobhook._webhook import WebhookHandler
from jobhook.outputs import OutputKeeper

__all__ = ["client", "consumer", "handler", "keeper", "options", "store"]


def options() -> dict[str, Any]:
    """The ``JOBHOOK`` setting (a dict; empty when unset)."""
    value = getattr(settings, "JOBHOOK", {})
    if not isinstance(value, dict):
        raise ImproperlyConfigured("JOBHOOK must be a dict")
    return value


def store() -> Any:
    """A `DjangoJobStore` on ``JOBHOOK["DATABASE"]`` (``"default"`` when unset); with
    ``KEEPER``, that keeper's guarded store instead."""
    from jobhook.django._store import DjangoJobStore

    kept = keeper()
    if kept is not None:
        return kept.store
    return DjangoJobStore(using=options().get("DATABASE", "default"))


def handler() -> WebhookHandler:
    """A `WebhookHandler` over `store`, verifying with ``SECRET`` and ``TOKEN_SECRET``."""
    conf = options()
    secret, token_secret = conf.get("SECRET"), conf.get("TOKEN_SECRET")
    if secret is None and token_secret is None:
        raise ImproperlyConfigured('JOBHOOK needs "SECRET" or "TOKEN_SECRET" for webhooks')
    return WebhookHandler(store(), secret=secret, token_secret=token_secret)


def client() -> Any:
    """The ``CLIENT`` (a dotted path to a `GeneratorClient`, or to a function returning
    one, called each time a client is needed: return the same one), or ``None`` when
    it is not configured."""
    path = options().get("CLIENT")
    if path is None:
        return None
    value = import_string(path) if isinstance(path, str) else path
    return value() if callable(value) and not hasattr(value, "submit") else value


def keeper() -> OutputKeeper | None:
    """The ``KEEPER`` (a dotted path to a `jobhook.outputs.OutputKeeper`, or to a
    function returning one, called each time: return the same one), or ``None`` when
    it is not configured. Raises `ImproperlyConfigured` for anything else."""
    path = options().get("KEEPER")
    if path is None:
        return None
    value = import_string(path) if isinstance(path, str) else path
    if callable(value) and not isinstance(value, OutputKeeper):
        value = value()
    if not isinstance(value, OutputKeeper):
        raise ImproperlyConfigured(
            f'JOBHOOK["KEEPER"] must name an OutputKeeper, not {type(value).__name__}'
        )
    return value


def consumer(name: str) -> Callable[[JobEvent], Any]:
    """The function ``CONSUMERS[name]`` names. Raises `ImproperlyConfigured`."""
    path = options().get("CONSUMERS", {}).get(name)
    if path is None:
        raise ImproperlyConfigured(f'JOBHOOK["CONSUMERS"] has no {name!r}')
    handle: Callable[[JobEvent], Any] = import_string(path) if isinstance(path, str) else path
    return handle
