"""Django settings of the sample. Secrets and the database's address come from the environment,
which the kit writes from celery_app_environment (values from vault)."""

import os

SECRET_KEY = os.environ["DJANGO_SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS = []
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_celery_beat",
    "django_celery_results",
    "stamps",
]
ROOT_URLCONF = "mysite.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ["DATABASE_HOST"],
        "NAME": os.environ.get("DATABASE_NAME", "celery"),
        "USER": os.environ.get("DATABASE_USER", "celery"),
        "PASSWORD": os.environ["DATABASE_PASSWORD"],
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
