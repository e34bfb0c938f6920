"""The Celery app of a Django project, as Celery's "First steps with Django" lays it out. Its
Celery settings are the kit's (celery_kit.config, named by CELERY_CONFIG_MODULE); Django's come
from mysite.settings (DJANGO_SETTINGS_MODULE, set by the kit from celery_app_django_settings)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

app = Celery("mysite")
app.config_from_envvar("CELERY_CONFIG_MODULE")
app.autodiscover_tasks()
