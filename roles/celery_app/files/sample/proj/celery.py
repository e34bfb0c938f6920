"""The Celery app, as laid out in Celery's "Next steps" guide. Its settings are the kit's: the
module celery_kit.config, which the kit's environment file names in CELERY_CONFIG_MODULE."""

from celery import Celery

app = Celery("proj", include=["proj.tasks"])
app.config_from_envvar("CELERY_CONFIG_MODULE")

if __name__ == "__main__":
    app.start()
