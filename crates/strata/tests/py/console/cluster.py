"""The cluster page: shows the leader and every member with its role and health, then adds a
fourth node through the "Add a member" form (it joins as a learner and is promoted once it
has caught up) and removes it with its Remove button, each after the confirmation dialog.

ctx.extra["new_member"]: {"id", "raft_addr", "api_addr"} of a running node that is not a
member yet.
"""
from selenium.webdriver.common.by import By

from common import api, click, open_page, row_of, shot, wait_no_text, wait_text, wait_until

MEMBERS = 'table[aria-label="members"]'


def role_shown(ctx, member, role):
    """The member's row, once the table shows it with `role` in its Role column."""

    def check():
        row = row_of(ctx, MEMBERS, member["raft_addr"])
        if row is None:
            return None
        cells = row.find_elements(By.TAG_NAME, "td")
        return row if cells[1].text.strip() == role else None

    return wait_until(f"node {member['id']} shown as {role}", check, timeout=30)


def all_up(ctx, count):
    """True once the table has `count` rows and each one's Health column says up."""
    rows = ctx.driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((r) => r.innerText)",
        f"{MEMBERS} tbody tr",
    )
    return len(rows) == count and all("up" in r.split("\t") for r in rows)


def confirm(ctx, expected_text):
    """Waits for the confirmation dialog to ask `expected_text`, then confirms."""
    wait_text(ctx, "dialog#confirm[open] #confirm-text", expected_text)
    ctx.driver.find_element(By.ID, "confirm-ok").click()
    wait_until("the dialog to close", lambda: not ctx.driver.find_elements(By.CSS_SELECTOR, "dialog#confirm[open]"))


def check(ctx):
    status = api(ctx, "GET", "/v1/cluster/status")
    members = status["members"]
    assert len(members) == 3, status
    open_page(ctx, "cluster")

    # The summary names the leader (as the node that served the page sees it).
    leader = wait_until(
        "a leader", lambda: api(ctx, "GET", "/v1/cluster/status").get("leader"), timeout=20
    )
    wait_text(ctx, ".cards .card", f"node {leader}")
    wait_text(ctx, ".cards .card", "Term")
    wait_text(ctx, ".cards .card", "Applied index")

    # Every member with its role: one leader, two followers.
    for member in members:
        role_shown(ctx, member, "leader" if member["id"] == leader else "follower")
        wait_text(ctx, f"{MEMBERS} tbody tr", member["api_addr"])

    # Health and apply lag come from the monitor's scrapes (every second in this test).
    wait_until("every member's health to show up", lambda: all_up(ctx, 3), timeout=30)
    shot(ctx, "cluster")

    # Add the fourth node through the form, after confirming.
    new = ctx.extra["new_member"]
    form = ctx.driver.find_element(By.CSS_SELECTOR, "form.row")
    for name in ("id", "raft_addr", "api_addr"):
        field = form.find_element(By.NAME, name)
        field.clear()
        field.send_keys(str(new[name]))
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_text(ctx, "dialog#confirm[open] #confirm-text", f"Add node {new['id']} at {new['raft_addr']}?")
    shot(ctx, "cluster-confirm")
    confirm(ctx, f"Add node {new['id']}")
    wait_text(ctx, "[role=status]", f"node {new['id']} added", timeout=60)
    role_shown(ctx, new, "follower")
    after = api(ctx, "GET", "/v1/cluster/status")
    assert any(m["id"] == new["id"] and m["role"] == "follower" for m in after["members"]), after
    # The monitor scrapes the new member too once it is one.
    wait_until(f"node {new['id']}'s health to show up", lambda: all_up(ctx, 4), timeout=30)
    shot(ctx, "cluster-added")

    # Remove it with its row's Remove button, after confirming.
    def remove_button():
        row = row_of(ctx, MEMBERS, new["raft_addr"])
        return row.find_element(By.XPATH, ".//button[normalize-space()='Remove']") if row else None

    click(ctx, remove_button, f"node {new['id']}'s Remove button")
    confirm(ctx, f"Remove node {new['id']}")
    wait_text(ctx, "[role=status]", f"node {new['id']} removed", timeout=30)
    wait_no_text(ctx, f"{MEMBERS} tbody tr", new["raft_addr"], timeout=30)
    after = api(ctx, "GET", "/v1/cluster/status")
    assert sorted(m["id"] for m in after["members"]) == sorted(m["id"] for m in members), after
    shot(ctx, "cluster-removed")
