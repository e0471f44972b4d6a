"""The wire shapes `FakeGenerator` can impersonate, one module per backend (as in
`jobhook.backends`): jobhook's contract, Cog, Replicate, fal, RunPod and OpenAI."""

from __future__ import annotations

from jobhook.testing._wires._base import (
    FakeJob,
    Intake,
    JobIdFromUrl,
    Wire,
    http_url,
    json_response,
    last_path_segment,
)
from jobhook.testing._wires._cog import CogWire
from jobhook.testing._wires._fal import FalWire
from jobhook.testing._wires._jobhook import JobhookWire
from jobhook.testing._wires._openai import OPENAI_WEBHOOK_URL, OpenAIWire
from jobhook.testing._wires._replicate import ReplicateWire
from jobhook.testing._wires._runpod import RunPodWire

__all__ = [
    "IMPERSONATIONS",
    "FakeJob",
    "Intake",
    "JobIdFromUrl",
    "Wire",
    "json_response",
    "last_path_segment",
    "make_wire",
]

#: The backends a fake can be: each is the ``name`` of a `jobhook.backends` profile.
IMPERSONATIONS = ("jobhook", "cog", "replicate", "fal", "runpod", "openai")


def make_wire(
    name: str,
    secret: str | bytes | None,
    *,
    api_key: str | None,
    job_id_from_url: JobIdFromUrl,
    webhook_url: str | None = None,
) -> tuple[Wire, str | bytes | None]:
    """The wire for ``name`` and the secret it signs with (made up when not given).
    ``webhook_url`` is OpenAI's one project-wide webhook URL.

    Raises `ValueError` for an unknown name or a secret the backend cannot use.
    """
    from jobhook._signing import new_webhook_secret

    if api_key is not None and name in ("jobhook", "cog"):
        raise ValueError(f"{name} takes no API key: pass api_key= only for a hosted backend")
    if webhook_url is not None and name in IMPERSONATIONS and name != "openai":
        raise ValueError(
            f"{name} calls back to the URL each submit names: webhook_url= is for openai, "
            "whose webhooks go to one project-wide URL"
        )
    wire: Wire
    if name == "openai":
        url = OPENAI_WEBHOOK_URL if webhook_url is None else http_url(webhook_url)
        if url is None:
            raise ValueError(f"webhook_url must be an http(s) URL, got {webhook_url!r}")
        secret = secret if secret is not None else new_webhook_secret()
        openai = OpenAIWire(
            secret, api_key=api_key, job_id_from_url=job_id_from_url, webhook_url=url
        )
        return openai, secret
    if name in ("jobhook", "replicate"):
        secret = secret if secret is not None else new_webhook_secret()
        wire_class = JobhookWire if name == "jobhook" else ReplicateWire
        wire = wire_class(secret, api_key=api_key, job_id_from_url=job_id_from_url)
        return wire, secret
    if name == "fal":
        if secret is not None and not isinstance(secret, bytes):
            raise ValueError("a fal fake signs with a 32-byte ED25519 private key (secret=)")
        fal = FalWire(secret, api_key=api_key, job_id_from_url=job_id_from_url)
        return fal, fal.private_key
    if name in ("cog", "runpod"):
        if secret is not None:
            raise ValueError(f"{name} does not sign its callbacks: pass no secret")
        wire_type = CogWire if name == "cog" else RunPodWire
        return wire_type(api_key=api_key, job_id_from_url=job_id_from_url), None
    raise ValueError(f"impersonate must be one of {', '.join(IMPERSONATIONS)}, got {name!r}")
