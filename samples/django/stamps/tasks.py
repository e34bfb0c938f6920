"""The sample's tasks. RELEASE changes from one release of the sample to the next, so that a
client can tell which release answered."""

import socket

from celery import shared_task

RELEASE = "v1"


@shared_task
def version():
    return RELEASE


@shared_task
def stamp(label):
    """Run by beat from a PeriodicTask in the database (django-celery-beat); its result goes to
    the database too (django-celery-results)."""
    return {"label": label, "release": RELEASE, "host": socket.gethostname()}
