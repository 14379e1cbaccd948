"""What every console page check shares: a headless Chromium driven by Selenium through the
system's chromedriver (Debian packages chromium and chromium-driver; scripts/test.sh installs
them), and helpers to open a page, wait for text, take screenshots and call the HTTP API.

A page check is a module NAME.py in this folder with a function `check(ctx)`; run.py starts
the browser, builds the Ctx and calls it. Pages re-render (the cluster page every 2 s), so
the helpers look elements up again on every poll instead of holding on to them.
"""
import http.server
import json
import os
import threading
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDTH, HEIGHT = 1280, 900


class Ctx:
    """One page check's browser, cluster and settings."""

    def __init__(self, driver, urls, screens, extra=None, token=None):
        # The browser (selenium.webdriver.Chrome).
        self.driver = driver
        # API base URLs of every node, `http://127.0.0.1:PORT`; the page is loaded from the
        # first.
        self.urls = [u.rstrip("/") for u in urls]
        # Folder the screenshots go to.
        self.screens = screens
        # Whatever the test passed as JSON (`--extra`): ids, addresses, names.
        self.extra = extra or {}
        # A bearer token for the API and the console, when access control is on.
        self.token = token

    @property
    def url(self):
        """The API base URL of the node the console is loaded from."""
        return self.urls[0]


def start_browser():
    """A headless Chromium with a 1280x900 window that keeps its console log."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.add_argument("--headless=new")
    options.add_argument(f"--window-size={WIDTH},{HEIGHT}")
    options.add_argument("--disable-dev-shm-usage")
    options.add_argument("--disable-gpu")
    options.add_argument("--no-first-run")
    options.add_argument("--hide-scrollbars")
    if os.geteuid() == 0:
        # Chromium's sandbox refuses to run as root (containers, CI).
        options.add_argument("--no-sandbox")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    # The window's size includes the browser's own bars, even headless: grow it so that the
    # page itself (and so every screenshot) is WIDTH x HEIGHT.
    driver.set_window_size(WIDTH, HEIGHT)
    inner_width, inner_height = driver.execute_script("return [innerWidth, innerHeight]")
    driver.set_window_size(2 * WIDTH - inner_width, 2 * HEIGHT - inner_height)
    return driver


def wait_until(what, check, timeout=10, interval=0.1):
    """Polls `check()` until it returns something true and returns that; raises
    TimeoutError naming `what` (and the last error `check` raised) after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = check()
            if value:
                return value
        except StaleElementReferenceException as e:
            # The page re-rendered between finding an element and reading it: try again.
            last_error = e
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error.msg})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}{detail}")
        time.sleep(interval)


def open_page(ctx, name, timeout=10):
    """Loads `{url}/ui/#/{name}` and waits for the page's section to appear."""
    target = f"{ctx.url}/ui/#/{name}"
    if ctx.token:
        ensure_token(ctx)
    same = ctx.driver.current_url == target
    ctx.driver.get(target)
    if same:
        # A navigation to the same URL with a fragment is no load at all.
        ctx.driver.refresh()
    css = f'section.page[data-page="{name}"]'
    return wait_until(
        f"the {name} page", lambda: ctx.driver.find_elements(By.CSS_SELECTOR, css), timeout
    )[0]


def ensure_token(ctx):
    """Puts ctx.token where the console keeps its login (sessionStorage), once per browser."""
    driver = ctx.driver
    if not driver.current_url.startswith(f"{ctx.url}/ui/"):
        driver.get(f"{ctx.url}/ui/")
    driver.execute_script("sessionStorage.setItem('strata.token', arguments[0])", ctx.token)


# Finds the elements matching a CSS selector whose visible text contains a string, in one
# step inside the page (so no element goes stale between finding and reading it).
FIND_TEXT = """
const [css, text] = arguments;
return [...document.querySelectorAll(css)].filter((e) => e.innerText.includes(text));
"""


def find_text(ctx, css, text):
    """Elements matching `css` whose visible text contains `text` (possibly none)."""
    return ctx.driver.execute_script(FIND_TEXT, css, text)


def wait_text(ctx, css, text, timeout=10):
    """Waits until an element matching `css` contains `text`; returns the first such element."""
    found = wait_until(
        f"{css!r} to contain {text!r}", lambda: find_text(ctx, css, text), timeout
    )
    return found[0]


def wait_no_text(ctx, css, text, timeout=10):
    """Waits until no element matching `css` contains `text`."""
    wait_until(
        f"no {css!r} to contain {text!r}", lambda: not find_text(ctx, css, text), timeout
    )


def click(ctx, find, what, timeout=10):
    """Clicks the element `find()` returns (looked up again if the page re-rendered it
    before the click landed); `what` names it in the timeout message."""

    def attempt():
        try:
            element = find()
            if element is None:
                return False
            element.click()
        except (StaleElementReferenceException, ElementClickInterceptedException):
            return False
        return True

    wait_until(what, attempt, timeout)


def row_of(ctx, table_css, text):
    """The first table row under `table_css` whose visible text contains `text`, or None."""
    rows = find_text(ctx, f"{table_css} tbody tr", text)
    return rows[0] if rows else None


def shot(ctx, name):
    """Saves a screenshot of the window as `{screens}/{name}.png`; returns its path."""
    os.makedirs(ctx.screens, exist_ok=True)
    path = os.path.join(ctx.screens, f"{name}.png")
    ctx.driver.save_screenshot(path)
    return path


def api(ctx, method, path, body=None, node=0, timeout=10):
    """Calls the HTTP API of node `node` and returns the parsed JSON body ({} when empty).
    An error status raises RuntimeError with the API's `{"code","message"}` body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(ctx.urls[node] + path, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    if ctx.token:
        request.add_header("authorization", f"Bearer {ctx.token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{method} {path}: HTTP {e.code}: {e.read().decode()}") from None
    return json.loads(text) if text else {}


def browser_log(ctx):
    """The browser console's messages so far, one per line."""
    try:
        entries = ctx.driver.get_log("browser")
    except Exception as e:  # the log is a diagnostic: never hide the real failure
        return f"(no browser log: {e})"
    return "\n".join(f"{e['level']} {e['message']}" for e in entries)


class LocalServer:
    """A local HTTP server on a free port that answers every GET with `answer()`, a pair of
    status and body (an upstream for the gateway, a target for a health check)."""

    def __init__(self, answer):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the name http.server calls)
                status, body = answer()
                self.send_response(status)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
