"""The gallery: a prompt form, and the generations with their jobs' progress."""

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.http import require_POST

from gallery import jobs
from gallery.models import ImageGeneration, Notification

USER_ID = "user-1"  # a real app takes the user from its login


def index(request: HttpRequest) -> HttpResponse:
    rows = []
    for generation in ImageGeneration.objects.order_by("-created_at")[:20]:
        job = jobs.store.get(generation.job_id)
        images = job.output.get("images") if isinstance(job.output, dict) else None
        rows.append({"generation": generation, "job": job, "image": images[0] if images else None})
    notifications = Notification.objects.filter(user_id=USER_ID).order_by("-id")
    return render(request, "gallery/index.html", {"rows": rows, "notifications": notifications})


@require_POST
def generate(request: HttpRequest) -> HttpResponse:
    jobs.start(request.POST["prompt"], USER_ID)
    return HttpResponseRedirect("/")
