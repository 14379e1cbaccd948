"""The gateway page: applies a small route table through the page's form (one route to a static
upstream whose member is a tiny HTTP server this check runs) and sees the route and the
upstream group with its member listed; when the test names the gateway's listener, sends a
request through it and sees the member's request count on the page. Then applies an invalid
table (a route to an upstream that does not exist) and sees the admin API's error as the API
gives it, and malformed JSON refused before it is sent. Deletes the route with its button
after the confirmation dialog.

ctx.extra["gateway_url"] (optional): `http://HOST:PORT` of node 1's gateway listener.
"""
import json
import urllib.request

from selenium.webdriver.common.by import By

from common import LocalServer, api, click, open_page, row_of, shot, wait_no_text, wait_text, wait_until

ROUTES = 'table[aria-label="routes"]'
NAME = "console-hello"


def hello_upstream():
    """A local upstream answering every GET with `hello`."""
    return LocalServer(lambda: (200, b"hello\n"))


def apply(ctx, table_json, replace=False):
    """Types `table_json` into the form's textarea and presses Apply."""
    form = ctx.driver.find_element(By.CSS_SELECTOR, "form.apply")
    text = form.find_element(By.NAME, "table")
    # Setting the value directly: send_keys into a textarea types slowly and autoindents nothing,
    # but a large table would take seconds.
    ctx.driver.execute_script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))", text, table_json
    )
    box = form.find_element(By.NAME, "replace")
    if box.is_selected() != replace:
        box.click()
    form.find_element(By.XPATH, ".//button[normalize-space()='Apply']").click()


def check(ctx):
    hello = hello_upstream()
    try:
        open_page(ctx, "gateway")
        wait_text(ctx, "section.page[data-page=gateway] p", "Table version")
        shot(ctx, "gateway")

        table = {
            "routes": [{"name": NAME, "path": {"prefix": f"/{NAME}"}, "strip_prefix": True, "upstream": NAME, "timeout": "5s"}],
            "upstreams": [{"name": NAME, "addresses": [hello.address], "balance": "round_robin"}],
        }
        apply(ctx, json.dumps(table, indent=2))
        wait_text(ctx, "[role=status]", "applied: version", timeout=20)
        wait_text(ctx, "[role=status]", "in force on this node")
        row = wait_until("the route in the table", lambda: row_of(ctx, ROUTES, NAME), timeout=10)
        assert f"path prefix /{NAME}" in row.text, row.text
        group = f'section.upstream[data-upstream="{NAME}"]'
        wait_text(ctx, group, hello.address)
        wait_text(ctx, group, "1 of 1 live")
        stored = api(ctx, "GET", f"/v1/gateway/routes/{NAME}")
        assert stored["upstream"] == NAME, stored

        gateway_url = ctx.extra.get("gateway_url")
        if gateway_url:
            with urllib.request.urlopen(f"{gateway_url}/{NAME}/x", timeout=10) as response:
                assert response.read() == b"hello\n"
            # The member's Requests column counts it (read every 2 s).
            wait_until(
                "the member's request count",
                lambda: any(
                    cells[0].text.strip() == hello.address and cells[8].text.strip() == "1"
                    for cells in (
                        r.find_elements(By.TAG_NAME, "td")
                        for r in ctx.driver.find_elements(By.CSS_SELECTOR, f"{group} tbody tr")
                    )
                ),
                timeout=10,
            )
        ctx.driver.execute_script(
            "document.querySelector(arguments[0]).scrollIntoView()", group
        )
        shot(ctx, "gateway-applied")

        # An invalid table: the API's error, as it gives it.
        bad = {"routes": [{"name": f"{NAME}-bad", "path": {"prefix": "/bad"}, "upstream": "no-such-upstream"}]}
        try:
            api(ctx, "POST", "/v1/gateway/routes", bad)
            raise AssertionError("the API accepted a route to a missing upstream")
        except RuntimeError as e:
            expected = json.loads(str(e).split(": ", 2)[2])
        apply(ctx, json.dumps(bad, indent=2))
        error = wait_text(ctx, "form.apply + div .error", expected["message"])
        assert expected["code"] in error.text, error.text
        assert ctx.driver.find_element(By.NAME, "table").get_attribute("aria-invalid") == "true"
        assert row_of(ctx, ROUTES, f"{NAME}-bad") is None
        ctx.driver.execute_script("document.querySelector('form.apply').scrollIntoView()")
        shot(ctx, "gateway-invalid")

        # Malformed JSON is refused before it is sent.
        apply(ctx, '{"routes": [')
        wait_text(ctx, "form.apply + div .error", "invalid_json")

        # Delete the route with its button, after confirming.
        def delete_button():
            found = row_of(ctx, ROUTES, NAME)
            return found.find_element(By.XPATH, ".//button[normalize-space()='Delete']") if found else None

        click(ctx, delete_button, f"route {NAME}'s Delete button")
        wait_text(ctx, "dialog#confirm[open] #confirm-text", f"Delete route {NAME}?")
        ctx.driver.find_element(By.ID, "confirm-ok").click()
        wait_text(ctx, "[role=status]", f"deleted route {NAME}", timeout=20)
        wait_no_text(ctx, f"{ROUTES} tbody tr", NAME)

        # A narrow window.
        ctx.driver.set_window_size(420, 900)
        wait_text(ctx, "section.page[data-page=gateway] h2", "Upstream groups")
        shot(ctx, "gateway-narrow")
    finally:
        ctx.driver.set_window_size(1280, 900)
        hello.close()
        # Only the route goes: putting the whole table back (replace) could drop sections
        # GET /v1/gateway/routes does not show (certificates, providers). The upstream stays,
        # unused.
        try:
            api(ctx, "DELETE", f"/v1/gateway/routes/{NAME}", timeout=20)
        except RuntimeError:
            pass
