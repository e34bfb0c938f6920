"""The kit's own Python on a Celery host, in one place (celery_kit_dir, on every Celery process's
PYTHONPATH through the kit's environment file): the settings module (config, rendered from the
inventory), kombu's Redis transport with the kit's changes (redis_transport), and the helpers
the playbooks and units run as the celery user (health, resize, control, status, drain,
watchdog). None of it is in the
app's own package."""
