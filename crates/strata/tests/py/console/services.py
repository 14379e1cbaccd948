"""The services page: registers two instances through the API, one with a TTL check kept
passing from here and one with an HTTP check against a tiny server this check runs, and sees
both passing in the list and on the service's page. Then makes both checks fail (the TTL
reports stop, the server answers 500) and watches the open page turn them critical without a
reload, with the HTTP check's output. Disables and enables an instance with its buttons
(checked through the API), sees the list split the unhealthy instances by status, and
deregisters an instance through the page after the confirmation dialog.

ctx.extra["service"] (optional): the service name to use (default "console-web").
"""
import threading

from selenium.webdriver.common.by import By

from common import LocalServer, api, click, open_page, row_of, shot, wait_no_text, wait_text, wait_until

SERVICES = 'table[aria-label="services"]'
INSTANCES = 'table[aria-label="instances"]'


class Health(LocalServer):
    """A local HTTP server whose /health answers `code`, for an HTTP check to probe."""

    def __init__(self):
        self.code = 200
        super().__init__(lambda: (self.code, b"ok\n" if self.code == 200 else b"broken on purpose\n"))


class TtlReporter:
    """Reports `passing` for a TTL-checked instance every 0.5 s until stopped."""

    def __init__(self, ctx, service, instance):
        self.stop_event = threading.Event()
        path = f"/v1/registry/services/{service}/instances/{instance}/status"

        def run():
            while not self.stop_event.is_set():
                try:
                    api(ctx, "PUT", path, {"status": "passing", "output": "reported by the test"})
                except Exception:  # a missed report only shortens the pass; the check waits
                    pass
                self.stop_event.wait(0.5)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def stop(self):
        self.stop_event.set()
        self.thread.join(timeout=5)


def instance_status(ctx, instance):
    """The status badge text of an instance's row on the service page, or None."""
    row = row_of(ctx, INSTANCES, instance)
    if row is None:
        return None
    badges = row.find_elements(By.CSS_SELECTOR, "[data-status]")
    return badges[0].text.strip() if badges else None


def wait_status(ctx, instance, status, timeout=20):
    wait_until(
        f"instance {instance} shown {status}",
        lambda: instance_status(ctx, instance) == status,
        timeout=timeout,
    )


def stored(ctx, service, instance):
    """The instance as the API answers it, or None."""
    reply = api(ctx, "GET", f"/v1/registry/services/{service}")
    return next((i for i in reply["instances"] if i["id"] == instance), None)


def confirm(ctx, expected_text):
    wait_text(ctx, "dialog#confirm[open] #confirm-text", expected_text)
    ctx.driver.find_element(By.ID, "confirm-ok").click()
    wait_until(
        "the dialog to close",
        lambda: not ctx.driver.find_elements(By.CSS_SELECTOR, "dialog#confirm[open]"),
    )


def button_in_row(ctx, table_css, row_text, label):
    def find():
        row = row_of(ctx, table_css, row_text)
        if row is None:
            return None
        return row.find_element(By.XPATH, f".//button[normalize-space()='{label}']")

    return find


def filter_list(ctx, service):
    """Types `service` into the list's filter box, once the list page shows it."""
    box = wait_until(
        "the list's filter box",
        lambda: ctx.driver.find_elements(By.CSS_SELECTOR, 'section.page[data-page=services] input[name="q"]'),
    )[0]
    box.clear()
    box.send_keys(service)


def check(ctx):
    service = ctx.extra.get("service", "console-web")
    ttl_id, http_id = "ttl-1", "http-1"
    # Leftovers of an earlier run would make the registrations conflict.
    for instance in (ttl_id, http_id):
        try:
            api(ctx, "DELETE", f"/v1/registry/services/{service}/instances/{instance}")
        except RuntimeError:
            pass

    server = Health()
    reporter = None
    try:
        api(ctx, "POST", "/v1/registry/instances", {
            "service": service, "id": ttl_id, "address": "127.0.0.1", "port": 9101,
            "tags": ["console", "ttl"], "meta": {"zone": "a"}, "weight": 2,
            "check": {"ttl": "2s"},
        })
        reporter = TtlReporter(ctx, service, ttl_id)
        api(ctx, "POST", "/v1/registry/instances", {
            "service": service, "id": http_id, "address": "127.0.0.1", "port": server.port,
            "tags": ["console", "http"], "meta": {"zone": "b"},
            "check": {
                "probe": {"kind": "http", "url": f"http://127.0.0.1:{server.port}/health"},
                "interval": "300ms", "timeout": "1s",
            },
        })

        # The list: the service with both instances passing.
        open_page(ctx, "services")
        filter_list(ctx, service)
        wait_text(ctx, f"{SERVICES} tbody tr", "2 passing", timeout=30)
        shot(ctx, "services-list")

        # The service's page, by its link in the list.
        click(
            ctx,
            lambda: ctx.driver.find_element(By.CSS_SELECTOR, f'{SERVICES} a[data-focus="svc:public/{service}"]'),
            f"the link to {service}",
        )
        wait_text(ctx, "section.page[data-page=services] h1", service)
        wait_text(ctx, "[role=status]", "Live")
        wait_status(ctx, ttl_id, "passing")
        wait_status(ctx, http_id, "passing")
        wait_text(ctx, f"{INSTANCES} tbody tr", "TTL 2s")
        wait_text(ctx, f"{INSTANCES} tbody tr", f"http://127.0.0.1:{server.port}/health")
        shot(ctx, "services-passing")

        # Both checks fail; the open page follows by its watch, with no reload.
        ctx.driver.execute_script("window.__servicesNotReloaded = true")
        reporter.stop()
        server.code = 500
        wait_status(ctx, http_id, "critical", timeout=20)
        wait_status(ctx, ttl_id, "critical", timeout=20)
        wait_text(ctx, f"{INSTANCES} tbody tr", "broken on purpose")
        assert ctx.driver.execute_script("return window.__servicesNotReloaded === true"), "the page reloaded"
        wait_text(ctx, ".health-counts", "2 critical")
        shot(ctx, "services-critical")

        # Disable with its button (after confirming), then enable again.
        click(ctx, button_in_row(ctx, INSTANCES, http_id, "Disable"), f"{http_id}'s Disable button")
        confirm(ctx, f"Disable instance {http_id}")
        wait_text(ctx, "[role=status]", f"disabled {service}/{http_id}")
        wait_until("the API to say disabled", lambda: stored(ctx, service, http_id)["enabled"] is False)
        wait_text(ctx, f"{INSTANCES} tbody tr", "disabled")
        wait_text(ctx, ".health-counts", "1 disabled")
        shot(ctx, "services-disabled")

        # The list splits the service's unhealthy instances by status.
        click(ctx, lambda: ctx.driver.find_element(By.LINK_TEXT, "← All services"), "the link back to the list")
        filter_list(ctx, service)
        wait_text(ctx, f"{SERVICES} tbody tr", "1 critical", timeout=15)
        wait_text(ctx, f"{SERVICES} tbody tr", "1 disabled")
        shot(ctx, "services-list-unhealthy")
        ctx.driver.back()
        wait_text(ctx, "[role=status]", "Live")

        click(ctx, button_in_row(ctx, INSTANCES, http_id, "Enable"), f"{http_id}'s Enable button")
        wait_text(ctx, "[role=status]", f"enabled {service}/{http_id}")
        wait_until("the API to say enabled", lambda: stored(ctx, service, http_id)["enabled"] is True)

        # Deregister through the page, after confirming.
        click(ctx, button_in_row(ctx, INSTANCES, ttl_id, "Deregister"), f"{ttl_id}'s Deregister button")
        confirm(ctx, f"Deregister instance {ttl_id}")
        wait_text(ctx, "[role=status]", f"deregistered {service}/{ttl_id}")
        wait_no_text(ctx, f"{INSTANCES} tbody tr", ttl_id)
        assert stored(ctx, service, ttl_id) is None, "the instance is still registered"
        shot(ctx, "services-deregistered")

        # A narrow window still shows the instance and its actions.
        ctx.driver.set_window_size(420, 900)
        wait_text(ctx, f"{INSTANCES} tbody tr", http_id)
        shot(ctx, "services-narrow")
    finally:
        ctx.driver.set_window_size(1280, 900)
        if reporter:
            reporter.stop()
        server.close()
        for instance in (ttl_id, http_id):
            try:
                api(ctx, "DELETE", f"/v1/registry/services/{service}/instances/{instance}")
            except RuntimeError:
                pass
