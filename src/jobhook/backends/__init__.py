"""Generator backends as profiles: each one backend's wire contract, without I/O.

```python
from jobhook import GeneratorClient, WebhookHandler, backends

backend = backends.Cog("http://127.0.0.1:5000")  # PUT /predictions/{job_id}: our id
client = GeneratorClient(store, backend, callback_url=CALLBACK, token_secret=TOKENS)
handler = WebhookHandler(store, backend=backend, token_secret=TOKENS)
```

`Backend` is the protocol a profile implements (see "Write your own backend" in the
docs); `Jobhook` (jobhook's own contract, the default), `Cog`, `Replicate`, `Fal`,
`RunPod` and `OpenAI` are built in.
"""

from jobhook._payloads import ParsedPayload
from jobhook.backends._base import (
    RETRYABLE_STATUSES,
    Backend,
    CallbackAuth,
    HostedProfile,
    ProfileBase,
    Request,
    SubmitAnswer,
)
from jobhook.backends._cog import Cog
from jobhook.backends._fal import Fal
from jobhook.backends._jobhook import Jobhook
from jobhook.backends._openai import OpenAI
from jobhook.backends._replicate import Replicate
from jobhook.backends._runpod import RunPod

__all__ = [
    "RETRYABLE_STATUSES",
    "Backend",
    "CallbackAuth",
    "Cog",
    "Fal",
    "HostedProfile",
    "Jobhook",
    "OpenAI",
    "ParsedPayload",
    "ProfileBase",
    "Replicate",
    "Request",
    "RunPod",
    "SubmitAnswer",
]
