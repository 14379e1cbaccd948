"""The KV page: puts a key through the form and sees it in the tree; sees a JSON value put
through the API pretty-printed and a binary one as hex; walks a key's older revisions; a
compare-and-set with a stale mod_revision shows the txn's conflict; the live watch shows a key
put through another node; deletes through the form after the confirmation dialog. Then, with
more keys than a page holds, the tree pages through them (how fast it loads is measured by
bench/console.sh, not here).

Every key lives under a fresh prefix, so the check can run against a store that has data.
"""
import base64
import time
import urllib.parse

from selenium.webdriver.common.by import By

from common import api, click, open_page, shot, wait_text, wait_until


def show(ctx, prefix, key=None):
    """Opens the KV page at `prefix` (and `key`) and waits for its watch to start."""
    params = {"prefix": prefix}
    if key is not None:
        params["key"] = key
    open_page(ctx, "kv")
    ctx.driver.get(f"{ctx.url}/ui/#/kv?{urllib.parse.urlencode(params)}")
    wait_text(ctx, 'section.page[data-page="kv"] [role=status]', "Watching from revision")
    if key is not None:
        wait_text(ctx, "#kv-viewer", key)


def value_of(ctx, key):
    kvs = api(ctx, "POST", "/v1/kv/range", {"key": key})["kvs"]
    return kvs[0]["value"] if kvs else None


def form_field(ctx, name):
    return ctx.driver.find_element(By.CSS_SELECTOR, f"#kv-form [name={name}]")


def fill(ctx, name, text):
    element = form_field(ctx, name)
    element.clear()
    element.send_keys(text)


def submit(ctx):
    ctx.driver.find_element(By.CSS_SELECTOR, "#kv-form button[type=submit]").click()


def first(ctx, by, selector):
    """The first element matching, or None (for click(), which then tries again)."""
    found = ctx.driver.find_elements(by, selector)
    return found[0] if found else None


def check(ctx):
    prefix = f"console-kv-{int(time.time() * 1000)}/"
    key = prefix + "greeting"
    show(ctx, prefix)
    wait_text(ctx, "#kv-tree", "No keys here.")

    # Put a new key through the form: "0" compares mod_revision 0, i.e. only if absent.
    fill(ctx, "key", key)
    fill(ctx, "value", "hello")
    assert form_field(ctx, "mod_revision").get_attribute("value") == "0"
    submit(ctx)
    wait_text(ctx, "#kv-status [role=status]", f"put {key} at revision")
    wait_text(ctx, ".kv-tree", "greeting")
    wait_text(ctx, "#kv-value", "hello")
    assert value_of(ctx, key) == "hello"
    shot(ctx, "kv-put")

    # A JSON value put through the API is pretty-printed; its folder shows in the tree.
    json_key = prefix + "conf/app.json"
    api(ctx, "POST", "/v1/kv/put", {"key": json_key, "value": '{"name":"strata","replicas":3,"zones":["a","b"]}'})
    show(ctx, prefix)
    wait_text(ctx, ".kv-tree .folder", "conf/")
    click(ctx, lambda: first(ctx, By.CSS_SELECTOR, ".kv-tree .folder a"), "the conf/ folder")
    wait_text(ctx, ".crumbs", "conf/")
    wait_text(ctx, ".kv-tree .leaf", "app.json")
    click(ctx, lambda: first(ctx, By.CSS_SELECTOR, ".kv-tree .leaf a"), "app.json in the tree")
    pretty = wait_text(ctx, "#kv-value", '"name": "strata"').text
    assert '\n  "replicas": 3,' in pretty, pretty
    wait_text(ctx, "#kv-viewer .badge", "json")
    assert "key=" in ctx.driver.current_url and "app.json" in urllib.parse.unquote(ctx.driver.current_url)
    shot(ctx, "kv-json")

    # Bytes that are not UTF-8 are shown as hex.
    binary_key = prefix + "blob"
    api(ctx, "POST", "/v1/kv/put", {"key": binary_key, "value": {"b64": base64.b64encode(b"\xff\x00\x01AB").decode()}})
    show(ctx, prefix, binary_key)
    wait_text(ctx, "#kv-value", "00000000  ff 00 01 41 42")
    wait_text(ctx, "#kv-viewer .badge", "binary")

    # Compare-and-set: the form holds the mod_revision it read; another writer changes the
    # key; the put that compares the stale revision fails with the txn's answer.
    show(ctx, prefix, key)
    stale = int(form_field(ctx, "mod_revision").get_attribute("value"))
    other = api(ctx, "POST", "/v1/kv/put", {"key": key, "value": "changed elsewhere"}, node=1)
    # The live watch reloads the value and warns that the form is now stale.
    wait_text(ctx, "#kv-value", "changed elsewhere")
    wait_text(ctx, "#kv-status .warn", "changed at revision")
    assert int(form_field(ctx, "mod_revision").get_attribute("value")) == stale
    fill(ctx, "value", "mine")
    submit(ctx)
    error = wait_text(ctx, "#kv-status .error", "compare failed").text
    assert f"mod_revision = {stale}" in error, error
    assert f"its mod_revision is {other['header']['revision']}" in error, error
    assert '"succeeded": false' in error, error
    assert value_of(ctx, key) == "changed elsewhere"
    shot(ctx, "kv-conflict")

    # The revision history walks back to the first value.
    click(ctx, lambda: first(ctx, By.XPATH, "//button[normalize-space()='Older revisions']"), "Older revisions")
    wait_text(ctx, "#kv-history", "hello")
    wait_text(ctx, "#kv-viewer", "Created at revision")

    # The live watch shows a key put through another node.
    remote = prefix + "from-node-2"
    api(ctx, "POST", "/v1/kv/put", {"key": remote, "value": "written on node 2"}, node=1)
    wait_text(ctx, "#kv-watch", remote)
    wait_text(ctx, "#kv-watch", "written on node 2")
    wait_text(ctx, "#kv-stale", "Keys changed since this list was read")
    shot(ctx, "kv-watch")

    # Delete through the form, comparing the current mod_revision, after confirming.
    show(ctx, prefix, key)
    click(ctx, lambda: first(ctx, By.XPATH, "//form[@id='kv-form']//button[normalize-space()='Delete']"), "Delete")
    wait_text(ctx, "dialog#confirm[open] #confirm-text", f"Delete the key {key} if its mod_revision is still")
    ctx.driver.find_element(By.ID, "confirm-ok").click()
    wait_text(ctx, "#kv-status [role=status]", f"deleted {key}")
    wait_text(ctx, "#kv-viewer", "No such key")
    assert value_of(ctx, key) is None
    wait_until("the key to leave the tree", lambda: "greeting" not in ctx.driver.find_element(By.ID, "kv-tree").text)

    # The page still loads fast in a narrow window.
    size = ctx.driver.get_window_size()
    ctx.driver.set_window_size(420, size["height"])
    try:
        show(ctx, prefix, json_key)
        wait_text(ctx, "#kv-value", '"name": "strata"')
        shot(ctx, "kv-narrow")
    finally:
        ctx.driver.set_window_size(size["width"], size["height"])

    # More keys than a page holds: half flat, half in folders. The page reads a page at a time.
    many = [f"{prefix}many/flat/k{i:05d}" for i in range(120)]
    many += [f"{prefix}many/tree/f{i // 10:03d}/k{i % 10:02d}" for i in range(120)]
    for at in range(0, len(many), 100):
        api(ctx, "POST", "/v1/kv/txn", {"compare": [], "success": [
            {"put": {"key": k, "value": f"value of {k}"}} for k in many[at:at + 100]]})
    quoted = urllib.parse.quote
    ctx.driver.get(f"{ctx.url}/ui/#/kv?prefix={quoted(prefix)}many/flat/")
    wait_text(ctx, "#kv-tree", "120 keys under")
    ctx.driver.get(f"{ctx.url}/ui/#/kv?key={quoted(prefix)}many/flat/k00042")
    wait_text(ctx, "#kv-value", "value of")
