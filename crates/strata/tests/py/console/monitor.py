"""The monitoring page: the health charts render (an <svg class="chart"> with a line), the
expression box draws `up` as a chart and shows the API's error at the expression for a bad
one, the targets list every node's /metrics as up, the alerts view answers, and a trace posted
here through OTLP/HTTP JSON is found by a search and drawn as a waterfall with its failed span.

Needs the monitor (it runs on every node unless roles leave it out). Scrapes every second in
the test make `up` appear quickly; with the default 15 s the waits still suffice.

Each target is scraped by one monitor node, which forwards the samples to the others. With
access control on and no node certificates (STRATA_TEST_AUTH=1) the peers refuse those
forwards (401), so a node holds only what it scraped itself, and node 1 may scrape nothing.
The check then opens the page on a node that holds samples, and expects `up` for the targets
that node knows: the page shows what the API answers.
"""
import secrets
import time
from urllib.parse import urlparse

from selenium.webdriver.common.by import By

from common import Ctx, api, click, open_page, shot, wait_text, wait_until

VIEW = "section.page[data-page=monitor] .monitor-view"


def lines_in(ctx, css):
    """How many chart lines with a drawn path are under `css`."""
    return ctx.driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].filter((p) => (p.getAttribute('d') || '').length > 1).length",
        f"{css} svg.chart path.line",
    )


def open_view(ctx, label, view):
    click(ctx, lambda: ctx.driver.find_element(By.LINK_TEXT, label), f"the {label} tab")
    wait_until(f"the {view} view", lambda: ctx.driver.find_elements(By.CSS_SELECTOR, f'{VIEW}[data-view="{view}"]'))


def post_trace(ctx, service):
    """Posts a three-span trace (the middle span failed) as OTLP/HTTP JSON; returns its id."""
    trace_id = secrets.token_hex(16)
    root, child, leaf = secrets.token_hex(8), secrets.token_hex(8), secrets.token_hex(8)
    now = time.time_ns()
    ms = 1_000_000

    def span(span_id, parent, name, kind, start, end, error=False, attributes=()):
        body = {
            "traceId": trace_id, "spanId": span_id, "name": name, "kind": kind,
            "startTimeUnixNano": str(now - 300 * ms + start * ms),
            "endTimeUnixNano": str(now - 300 * ms + end * ms),
            "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attributes],
            "status": {"code": "STATUS_CODE_ERROR", "message": "no stock"} if error else {"code": "STATUS_CODE_OK"},
        }
        if parent:
            body["parentSpanId"] = parent
        return body

    def resource(name, spans):
        return {
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": name}}]},
            "scopeSpans": [{"spans": spans}],
        }

    api(ctx, "POST", "/v1/traces", {"resourceSpans": [
        resource(service, [
            span(root, None, "POST /checkout", "SPAN_KIND_SERVER", 0, 180, attributes=[("http.method", "POST")]),
            span(child, root, "orders.v1.Orders/Create", "SPAN_KIND_CLIENT", 20, 150, error=True),
        ]),
        resource(f"{service}-orders", [
            span(leaf, child, "orders.v1.Orders/Create", "SPAN_KIND_SERVER", 30, 140, error=True,
                 attributes=[("rpc.grpc.status_code", "9")]),
        ]),
    ]})
    return trace_id


def up_series(ctx, node):
    """The instances node `node` has an `up` sample of."""
    reply = api(ctx, "GET", "/api/v1/query?query=up", node=node)
    return {r["metric"].get("instance") for r in reply["data"]["result"]}


def with_samples(ctx, timeout=15):
    """`ctx` turned to the node that holds samples of every node's `up` (node 1 normally),
    or, when no node does within `timeout` s (samples not replicated), of the most; with the
    instances that node has `up` of."""
    everyone = {urlparse(u).netloc for u in ctx.urls}
    deadline = time.monotonic() + timeout
    while True:
        seen = [up_series(ctx, i) for i in range(len(ctx.urls))]
        full = [i for i, s in enumerate(seen) if everyone <= s]
        if full or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    node = full[0] if full else max(range(len(seen)), key=lambda i: len(seen[i]))
    assert seen[node], f"no monitor node holds any `up` sample: {seen}"
    urls = ctx.urls[node:] + ctx.urls[:node]
    return Ctx(ctx.driver, urls, ctx.screens, ctx.extra, ctx.token), seen[node]


def check(ctx):
    ctx, known = with_samples(ctx)
    print(f"monitor page on {ctx.url}, which has `up` of {sorted(known)}")
    service = ctx.extra.get("trace_service", "console-shop")
    trace_id = post_trace(ctx, service)

    # Health: the charts draw lines (the node's own metrics since it started).
    open_page(ctx, "monitor")
    wait_until("health charts with lines", lambda: lines_in(ctx, VIEW) >= 3, timeout=40)
    wait_text(ctx, f"{VIEW} .chart-card h2", "Raft apply lag")
    shot(ctx, "monitor")

    # Query: `up` draws a chart, one line per node.
    open_view(ctx, "Query", "query")
    expr = ctx.driver.find_element(By.NAME, "expr")
    expr.clear()
    expr.send_keys("up")
    ctx.driver.find_element(By.XPATH, "//form[contains(@class,'query')]//button[normalize-space()='Run']").click()
    wait_until("a chart of up", lambda: lines_in(ctx, VIEW) >= len(known), timeout=30)
    wait_text(ctx, f'{VIEW} table[aria-label="latest values"] tbody tr', 'job="strata"')
    shot(ctx, "monitor-query")

    # A bad expression: the API's error at the expression, and the box marked invalid.
    expr = ctx.driver.find_element(By.NAME, "expr")
    expr.clear()
    expr.send_keys("sum(rate(up[1m])")
    expr.submit()
    error = wait_text(ctx, "#expr-error .error", "bad_data")
    assert "parse error" in error.text, error.text
    assert ctx.driver.find_element(By.NAME, "expr").get_attribute("aria-invalid") == "true"
    shot(ctx, "monitor-query-error")

    # Targets: every node's /metrics, up where this node knows it (its own scrapes, or the
    # replicated `up`).
    open_view(ctx, "Targets", "targets")
    for url in ctx.urls:
        address = urlparse(url).netloc
        wanted = "up" if address in known else None

        def target_row(address=address, wanted=wanted):
            # The row of this node's /metrics, with `wanted` in its Health column (the third).
            return ctx.driver.execute_script(
                """const [css, url, wanted] = arguments;
                return [...document.querySelectorAll(css)].some((r) =>
                  r.innerText.includes(url) && (!wanted || r.children[2].innerText.trim() === wanted));""",
                f'{VIEW} table[aria-label="targets"] tbody tr',
                f"http://{address}/metrics",
                wanted,
            )

        wait_until(f"target {address} listed{' up' if wanted else ''}", target_row, timeout=40)
    shot(ctx, "monitor-targets")

    # Alerts: the view answers (firing ones listed, or none).
    open_view(ctx, "Alerts", "alerts")
    wait_until(
        "the alerts table or its empty message",
        lambda: ctx.driver.find_elements(By.CSS_SELECTOR, f'{VIEW} table[aria-label="alerts"]')
        or "No alerts firing or pending." in ctx.driver.find_element(By.CSS_SELECTOR, VIEW).text,
    )
    wait_text(ctx, f"{VIEW} h2", "Alerting rules")
    shot(ctx, "monitor-alerts")

    # Traces: search by service and duration, open the trace, see its waterfall.
    open_view(ctx, "Traces", "traces")
    form = ctx.driver.find_element(By.CSS_SELECTOR, f"{VIEW} form[role=search]")
    box = form.find_element(By.NAME, "service")
    box.clear()
    box.send_keys(service)
    minimum = form.find_element(By.NAME, "min_duration")
    minimum.clear()
    minimum.send_keys("100ms")
    form.find_element(By.XPATH, ".//button[normalize-space()='Search']").click()
    wait_text(ctx, f'{VIEW} table[aria-label="traces"] tbody tr', trace_id[:16], timeout=15)
    click(ctx, lambda: ctx.driver.find_element(By.CSS_SELECTOR, f'button[data-trace="{trace_id}"]'), "the trace's link")
    wait_text(ctx, "#trace h2", f"Trace {trace_id}")
    rows = wait_until(
        "three spans in the waterfall",
        lambda: (lambda r: r if len(r) == 3 else None)(ctx.driver.find_elements(By.CSS_SELECTOR, "#trace ol.waterfall li.wf-row")),
    )
    assert service in rows[0].text and "POST /checkout" in rows[0].text, rows[0].text
    assert len(ctx.driver.find_elements(By.CSS_SELECTOR, "#trace .waterfall .bar.error")) == 2
    # The bars sit on the trace's time line: the root spans it, the leaf starts later and ends
    # sooner (30 ms to 140 ms of 180 ms).
    bars = ctx.driver.execute_script(
        "return [...document.querySelectorAll('#trace .waterfall .bar')].map((b) => "
        "[b.offsetLeft - b.parentElement.offsetLeft, b.offsetWidth, b.parentElement.clientWidth])"
    )
    (root_left, root_width, track), _, (leaf_left, leaf_width, _) = bars
    assert root_width > 0.9 * (track - 8) and leaf_left > root_left + 0.1 * track, bars
    assert 0.5 * track < leaf_width < 0.7 * track, bars
    # A span's details open with its button.
    rows[2].find_element(By.CSS_SELECTOR, "button.wf-label").click()
    wait_text(ctx, "#trace .wf-details", "rpc.grpc.status_code")
    wait_text(ctx, "#trace .wf-details", "no stock")
    ctx.driver.execute_script("document.querySelector('#trace').scrollIntoView()")
    shot(ctx, "monitor-trace")

    # A narrow window keeps the waterfall readable.
    ctx.driver.set_window_size(420, 900)
    try:
        wait_text(ctx, "#trace h2", "Trace")
        ctx.driver.execute_script("document.querySelector('#trace').scrollIntoView()")
        shot(ctx, "monitor-trace-narrow")
    finally:
        ctx.driver.set_window_size(1280, 900)
