"""The Configs page: publishes a new JSON config through the editor; edits it with a syntax
error on line 3 and sees the error at that line (and nothing published); sees the config
center's own check of a YAML error at its line; fixes and publishes; compares two versions
side by side; rolls back to version 1 after the confirmation dialog and sees the content
restored; starts a gray release to two addresses, sees who gets it, and promotes it; starts
one by label and aborts it; sees its live changes and listener counts. Then, with more
configs in a namespace than a page holds, the list pages through them.

The config's data id is fresh, so the check can run against a store that has data.
"""
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from common import api, click, open_page, shot, wait_text, wait_until

V1 = '{\n  "port": 80\n}'
BAD = '{\n  "port": 81,\n  "host" "db"\n}'
V2 = '{\n  "port": 81,\n  "host": "db"\n}'
GRAY = '{\n  "port": 90\n}'


def get(ctx, data_id, **query):
    q = urllib.parse.urlencode({"data_id": data_id, **query})
    return api(ctx, "GET", f"/v1/config/get?{q}")


def element(ctx, css):
    return ctx.driver.find_element(By.CSS_SELECTOR, css)


def type_into(ctx, css, text):
    field = element(ctx, css)
    field.clear()
    field.send_keys(text)
    wait_until(f"{css} to hold what was typed", lambda: element(ctx, css).get_attribute("value") == text)


def confirm(ctx, expected, name):
    wait_text(ctx, "dialog#confirm[open] #confirm-text", expected)
    shot(ctx, name)
    ctx.driver.find_element(By.ID, "confirm-ok").click()
    wait_until("the dialog to close", lambda: not ctx.driver.find_elements(By.CSS_SELECTOR, "dialog#confirm[open]"))


def history_button(ctx, version, label):
    def find():
        for row in ctx.driver.find_elements(By.CSS_SELECTOR, 'table[aria-label="history"] tbody tr'):
            cells = row.find_elements(By.TAG_NAME, "td")
            if cells and cells[0].text.split(" ")[0] == str(version):
                buttons = row.find_elements(By.XPATH, f".//button[normalize-space()='{label}']")
                return buttons[0] if buttons else None
        return None

    return find


def shot_at(ctx, css, name):
    """A screenshot with the element `css` in the middle of the window."""
    ctx.driver.execute_script("document.querySelector(arguments[0]).scrollIntoView({block: 'center'})", css)
    shot(ctx, name)


def first(ctx, by, selector):
    """The first element matching, or None (for click(), which then tries again)."""
    found = ctx.driver.find_elements(by, selector)
    return found[0] if found else None


def check(ctx):
    data_id = f"console-{int(time.time() * 1000)}.json"
    open_page(ctx, "configs")
    wait_text(ctx, "#cfg-list", "in namespace public")

    # A new config through the editor.
    click(ctx, lambda: first(ctx, By.LINK_TEXT, "New config"), "New config")
    wait_text(ctx, "#cfg-detail h2", "New config")
    type_into(ctx, "#cfg-form [name=data_id]", data_id)
    Select(element(ctx, "#cfg-form [name=type]")).select_by_value("json")
    type_into(ctx, "#cfg-form [name=desc]", "made by the console check")
    type_into(ctx, "#cfg-form textarea[name=content]", V1)
    element(ctx, "#cfg-form button[type=submit]").click()
    wait_text(ctx, "#cfg-status [role=status]", f"published {data_id} version 1")
    wait_text(ctx, 'table[aria-label="configs"]', data_id)
    wait_text(ctx, "#cfg-meta", "version 1")
    assert get(ctx, data_id)["content"] == V1
    # The editor highlights JSON: the key is coloured as a key.
    wait_text(ctx, ".code-hl .t-key", '"port"')
    shot(ctx, "configs-published")

    # A syntax error on line 3 is caught before publishing and shown at its line.
    type_into(ctx, "#cfg-form textarea[name=content]", BAD)
    element(ctx, "#cfg-form button[type=submit]").click()
    wait_text(ctx, "#cfg-problem .error", "line 3")
    wait_until("line 3 marked in the editor", lambda: ctx.driver.find_elements(By.CSS_SELECTOR, '.code-hl .ln.bad[data-line="3"]'))
    wait_text(ctx, ".code-gutter span.bad", "3")
    assert get(ctx, data_id)["version"] == 1
    shot(ctx, "configs-error")
    # "Go to line 3" puts the cursor on that line.
    element(ctx, "#cfg-problem button").click()
    start = ctx.driver.execute_script("const t = document.querySelector('#cfg-form textarea[name=content]'); return t.value.slice(0, t.selectionStart)")
    assert start.count("\n") == 2, repr(start)

    # The config center checks every type: a YAML error, found by the server, at its line.
    Select(element(ctx, "#cfg-form [name=type]")).select_by_value("yaml")
    type_into(ctx, "#cfg-form textarea[name=content]", "a: 1\n b: [\n")
    click(ctx, lambda: first(ctx, By.XPATH, "//form[@id='cfg-form']//button[normalize-space()='Check']"), "Check")
    wait_text(ctx, "#cfg-problem .error", "invalid yaml at line 2")
    wait_until("line 2 marked", lambda: ctx.driver.find_elements(By.CSS_SELECTOR, '.code-hl .ln.bad[data-line="2"]'))
    assert get(ctx, data_id)["version"] == 1
    Select(element(ctx, "#cfg-form [name=type]")).select_by_value("json")

    # Fixed, it publishes as version 2.
    type_into(ctx, "#cfg-form textarea[name=content]", V2)
    click(ctx, lambda: first(ctx, By.XPATH, "//form[@id='cfg-form']//button[normalize-space()='Check']"), "Check")
    wait_text(ctx, "#cfg-problem [role=status]", "Valid json")
    element(ctx, "#cfg-form button[type=submit]").click()
    wait_text(ctx, "#cfg-status [role=status]", f"published {data_id} version 2")
    assert get(ctx, data_id)["content"] == V2

    # History, and version 1 against version 2 side by side.
    wait_text(ctx, 'table[aria-label="history"]', "2 (current)")
    click(ctx, history_button(ctx, 1, "Diff with 2"), "Diff with 2")
    wait_text(ctx, ".cfg-diff td.del", '"port": 80')
    wait_text(ctx, ".cfg-diff td.add", '"port": 81,')
    wait_text(ctx, ".cfg-diff td.add", '"host": "db"')
    shot_at(ctx, ".cfg-diff", "configs-diff")

    # Roll back to version 1, after confirming: the content is version 1's again.
    click(ctx, history_button(ctx, 1, "Roll back"), "Roll back version 1")
    confirm(ctx, f"Roll {data_id} back to version 1?", "configs-rollback-confirm")
    wait_text(ctx, "#cfg-status [role=status]", "back to version 1: now version 3")
    wait_until("the editor to show version 1's content",
               lambda: element(ctx, "#cfg-form textarea[name=content]").get_attribute("value") == V1)
    wait_text(ctx, 'table[aria-label="history"]', "rollback")
    served = get(ctx, data_id)
    assert served["content"] == V1 and served["version"] == 3, served
    shot_at(ctx, 'table[aria-label="history"]', "configs-rollback")

    # A gray release to two addresses: shown with whom it goes to; a client asks what it gets.
    type_into(ctx, "#cfg-gray-form textarea[name=gray_content]", GRAY)
    Select(element(ctx, "#cfg-gray-form [name=gray_by]")).select_by_value("ips")
    type_into(ctx, "#cfg-gray-form [name=gray_to]", "10.0.0.7, 10.0.0.8")
    element(ctx, "#cfg-gray-form button[type=submit]").click()
    wait_text(ctx, "#cfg-gray-running", "10.0.0.7")
    wait_text(ctx, "#cfg-gray-running", "10.0.0.8")
    wait_text(ctx, "#cfg-gray-running", '"port": 90')
    assert get(ctx, data_id, ip="10.0.0.7")["gray"] is True
    assert get(ctx, data_id, ip="10.0.0.9")["content"] == V1
    type_into(ctx, "#cfg-gray [name=probe_ip]", "10.0.0.8")
    click(ctx, lambda: first(ctx, By.XPATH, "//div[@id='cfg-gray']//button[normalize-space()='Ask']"), "Ask")
    wait_text(ctx, "#cfg-probe", "gray")
    type_into(ctx, "#cfg-gray [name=probe_ip]", "10.0.0.9")
    click(ctx, lambda: first(ctx, By.XPATH, "//div[@id='cfg-gray']//button[normalize-space()='Ask']"), "Ask")
    wait_text(ctx, "#cfg-probe", "version 3")
    wait_text(ctx, 'table[aria-label="configs"]', "gray")
    shot_at(ctx, "#cfg-gray-running", "configs-gray")

    # Promote it, after confirming: everyone gets it as version 4.
    click(ctx, lambda: first(ctx, By.XPATH, "//button[normalize-space()='Promote to everyone']"), "Promote")
    confirm(ctx, f"Promote the gray release of {data_id}?", "configs-promote-confirm")
    wait_text(ctx, "#cfg-gray-status [role=status]", "now version 4")
    wait_text(ctx, "#cfg-gray-none", "No gray release is running.")
    served = get(ctx, data_id)
    assert served["content"] == GRAY and served["version"] == 4, served
    wait_until("the editor to show the promoted content",
               lambda: element(ctx, "#cfg-form textarea[name=content]").get_attribute("value") == GRAY)

    # A gray release by label, aborted: nobody gets it any more, and nothing was published.
    type_into(ctx, "#cfg-gray-form textarea[name=gray_content]", '{"port": 91}')
    Select(element(ctx, "#cfg-gray-form [name=gray_by]")).select_by_value("labels")
    type_into(ctx, "#cfg-gray-form [name=gray_to]", "env=canary")
    element(ctx, "#cfg-gray-form button[type=submit]").click()
    wait_text(ctx, "#cfg-gray-running", "env=canary")
    assert get(ctx, data_id, label="env=canary")["gray"] is True
    click(ctx, lambda: first(ctx, By.XPATH, "//div[@id='cfg-gray-running']//button[normalize-space()='Abort']"), "Abort")
    confirm(ctx, f"Abort the gray release of {data_id}?", "configs-abort-confirm")
    wait_text(ctx, "#cfg-gray-status [role=status]", "aborted the gray release")
    wait_text(ctx, "#cfg-gray-none", "No gray release is running.")
    served = get(ctx, data_id, label="env=canary")
    assert served["gray"] is False and served["version"] == 4, served

    # Listeners: the counts per node, and this page's own watch saw every version.
    wait_text(ctx, "#cfg-listeners", "listening")
    wait_text(ctx, "#cfg-watch", "gray-promote version 4")
    wait_text(ctx, "#cfg-watch", "rollback version 3")
    shot_at(ctx, "#cfg-listeners", "configs-listeners")

    # A change made elsewhere shows up live.
    api(ctx, "POST", "/v1/config/publish", {"data_id": data_id, "content": '{"port": 95}'}, node=1)
    wait_text(ctx, "#cfg-meta", "version 5")
    wait_text(ctx, "#cfg-form button[type=submit]", "Publish version 6")
    wait_until("the editor to show version 5",
               lambda: element(ctx, "#cfg-form textarea[name=content]").get_attribute("value") == '{"port": 95}')

    # Readable in a narrow window.
    size = ctx.driver.get_window_size()
    ctx.driver.set_window_size(420, size["height"])
    try:
        ctx.driver.execute_script("window.scrollTo(0, 0)")
        wait_text(ctx, "#cfg-detail h2", data_id)
        shot(ctx, "configs-narrow")
    finally:
        ctx.driver.set_window_size(size["width"], size["height"])

    # More configs than a page holds, in a namespace of their own: the list pages through them
    # (how fast it loads is measured by bench/console.sh, not here).
    namespace = f"perf{int(time.time())}"

    def publish(i):
        content = "".join(f"key{j}: value {i} {j}\n" for j in range(15))
        api(ctx, "POST", "/v1/config/publish", {"namespace": namespace, "group": f"g{i % 7}",
            "data_id": f"svc-{i:04d}.yaml", "type": "yaml", "content": content, "tags": ["perf"]})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(publish, range(60)))
    ctx.driver.get(f"{ctx.url}/ui/#/configs?ns={namespace}")
    wait_text(ctx, "#cfg-list", "60 configs in namespace")
