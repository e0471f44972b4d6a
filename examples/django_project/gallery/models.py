"""The app's own tables: its image generations, each naming its jobhook job, and the
notifications made when they finish."""

from django.db import models


class ImageGeneration(models.Model):
    prompt = models.TextField()
    author_id = models.CharField(max_length=64)
    job_id = models.CharField(max_length=255, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)


class Notification(models.Model):
    user_id = models.CharField(max_length=64)
    text = models.TextField()
    job_id = models.CharField(max_length=255, unique=True)  # one per finished job
