"""The wire shapes `FakeGenerator` can impersonate, one module per backend (as in
`jobhook.backends`): jobhook's contract, Cog, Replicate, fal and RunPod."""

from __future__ import annotations

from jobhook.testing._wires._base import (
    FakeJob,
    Intake,
    JobIdFromUrl,
    Wire,
    json_response,
    last_path_segment,
)
from jobhook.testing._wires._cog import CogWire
from jobhook.testing._wires._fal import FalWire
from jobhook.testing._wires._jobhook import JobhookWire
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
IMPERSONATIONS = ("jobhook", "cog", "replicate", "fal", "runpod")


def make_wire(
    name: str,
    secret: str | bytes | None,
    *,
    api_key: str | None,
    job_id_from_url: JobIdFromUrl,
) -> tuple[Wire, str | bytes | None]:
    """The wire for ``name`` and the secret it signs with (made up when not given).

    Raises `ValueError` for an unknown name or a secret the backend cannot use.
    """
    from jobhook._signing import new_webhook_secret

    if api_key is not None and name in ("jobhook", "cog"):
        raise ValueError(f"{name} takes no API key: pass api_key= only for a hosted backend")
    wire: Wire
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
