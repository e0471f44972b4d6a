"""The example's routes: the admin, the gallery, and jobhook's webhook."""

from django.contrib import admin
from django.urls import path
from gallery import views

from jobhook.django import webhook_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", views.index, name="index"),
    path("generate", views.generate, name="generate"),
    # Built from settings.JOBHOOK over the project's database.
    path("webhooks/jobhook/<str:job_id>", webhook_view(), name="jobhook-webhook"),
]
