"""The example's routes: the admin, the gallery, jobhook's webhook, and the kept
pictures."""

from django.conf import settings
from django.contrib import admin
from django.urls import path
from django.views.static import serve
from gallery import views

from jobhook.django import webhook_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", views.index, name="index"),
    path("generate", views.generate, name="generate"),
    # Built from settings.JOBHOOK over the project's database.
    path("webhooks/jobhook/<str:job_id>", webhook_view(), name="jobhook-webhook"),
    # The kept pictures. Fine for an example; in production the web server serves
    # MEDIA_ROOT (or the keeper writes to an S3Storage).
    path("files/<path:path>", serve, {"document_root": settings.MEDIA_ROOT}),
]
