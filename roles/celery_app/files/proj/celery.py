"""The Celery app, as laid out in Celery's "Next steps" guide."""

from celery import Celery

app = Celery("proj", include=["proj.tasks"])
app.config_from_object("proj.celeryconfig")

if __name__ == "__main__":
    app.start()
