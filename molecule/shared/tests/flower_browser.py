"""Look at Flower the way an operator does: in a real (headless) Chromium, logged in with basic
authentication. Used by test_flower.py; runnable by hand against the sandbox:

    python flower_browser.py http://127.0.0.1:5555/ admin PASSWORD worker1@celery-sandbox-worker1
"""

import os
import sys
import time

from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("KIT_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking switches Chromium calls home, which a closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _rows(page, table):
    return page.eval_on_selector_all(
        "#%s tbody tr" % table,
        "rows => rows.map(r => Array.from(r.querySelectorAll('td')).map(td => td.textContent.replace(/\s+/g, ' ').trim()))")


def wait_for(what, predicate, timeout, pause=lambda: time.sleep(2)):
    """predicate()'s first true value, asked again after each pause until TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %d s waiting for %s" % (timeout, what))
        pause()


def _wait_for(page, what, predicate, timeout):
    # The page's own wait keeps the browser's events flowing.
    return wait_for(what, predicate, timeout, pause=lambda: page.wait_for_timeout(500))


def look(url, user, password, workers, task_id=None, shots_dir=None, timeout=60):
    """Return {'workers': {name: status text}, 'task': state text or None}."""
    base = url.rstrip("/")
    seen = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(http_credentials={"username": user, "password": password},
                                          viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.goto(base + "/workers", wait_until="networkidle")

            last = {}

            # A worker that missed a heartbeat on a busy host shows Offline until its next one:
            # the page is read again until every worker is Online, or the time is up.
            def workers_online():
                rows = {r[0]: r[1] for r in _rows(page, "workers-table") if len(r) > 1}
                last.update(rows)
                if all(rows.get(w) == "Online" for w in workers):
                    return rows
                page.reload(wait_until="networkidle")
                return None

            try:
                _wait_for(page, "every worker Online on the workers page", workers_online, timeout)
            except AssertionError:
                pass  # the caller's assertion shows what the page said
            seen["workers"] = {w: last.get(w) for w in workers}
            if shots_dir:
                page.screenshot(path=os.path.join(shots_dir, "flower-workers.png"), full_page=True)

            seen["task"] = None
            if task_id:
                # The task's own page, where an operator lands from a search: the tasks list pages
                # and sorts, so after a few hundred heartbeats one task may be on another page.
                def task_state(wanted):
                    response = page.goto(base + "/task/" + wanted, wait_until="networkidle")
                    if response is not None and response.ok:
                        text = page.inner_text("body")
                        if wanted in text and "SUCCESS" in text.split():
                            return "SUCCESS"
                    return None

                # Task events are fire-and-forget (a Redis broker publishes them on pub/sub): one
                # that Flower missed is never seen. With task_id a function that sends a task and
                # returns its id, up to three tasks are tried, each given a third of the time.
                tries = 3 if callable(task_id) else 1
                for attempt in range(1, tries + 1):
                    wanted = task_id() if callable(task_id) else task_id
                    try:
                        seen["task"] = _wait_for(page, "task %s on its page" % wanted,
                                                 lambda: task_state(wanted), timeout / tries)
                        seen["task_attempt"] = attempt
                        break
                    except AssertionError:
                        if shots_dir:
                            page.screenshot(path=os.path.join(shots_dir, "flower-task-missed-%d.png" % attempt),
                                            full_page=True)
                        if attempt == tries:
                            raise
                if shots_dir:
                    page.screenshot(path=os.path.join(shots_dir, "flower-task.png"), full_page=True)
        finally:
            browser.close()
    return seen


if __name__ == "__main__":
    url, user, password, *names = sys.argv[1:]
    print(look(url, user, password, names, shots_dir="."))
