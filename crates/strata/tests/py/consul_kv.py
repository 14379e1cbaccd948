#!/usr/bin/env python3
"""Drive Strata's Consul KV, session and transaction endpoints with the unmodified
py-consul client (pip package py-consul, import name consul), against two nodes of one
cluster.

Usage: python3 consul_kv.py HOST:PORT OTHER_HOST:PORT

  HOST:PORT        the Consul-compatible listener of one node
  OTHER_HOST:PORT  the Consul-compatible listener of another node of the same cluster

Prints one line per step; on the first failed expectation prints what was expected and
what was received and exits 1 (2 for bad usage); exits 0 after "all steps passed".

Where a step asserts Consul's behaviour, the comment above it quotes the Consul HTTP API
documentation (developer.hashicorp.com/consul/api-docs: kv, txn, session) it checks.
"""

from __future__ import annotations

import base64
import sys
import threading
import time

import consul
from consul_compat import Failure, Steps, expect, parse_addr  # shared with the agent-API test


def raw_get(c, path, params=None):
    """A GET whose answer is returned as it came: (status, headers, body text)."""
    response = c.http.get(lambda r: r, path, params=params or [])
    return response.code, response.headers, response.body


def kv_crud(c, steps):
    steps.start("kv put and get")
    # kv: "Even though the return type is application/json, the value is either true or
    # false, indicating whether the create/update succeeded."
    expect(c.kv.put("app/config/db", "postgres://a") is True, "put", True, None)
    index, entry = c.kv.get("app/config/db")
    expect(entry is not None, "get", "an entry", entry)
    expect(entry["Value"] == b"postgres://a", "Value (base64 decoded)", b"postgres://a", entry["Value"])
    expect(entry["Key"] == "app/config/db", "Key", "app/config/db", entry["Key"])
    for field in ("LockIndex", "Flags", "CreateIndex", "ModifyIndex"):
        expect(field in entry, f"field {field}", "present", sorted(entry))
    expect("Session" not in entry, "Session of an unlocked key", "absent", entry.get("Session"))
    expect(int(index) == entry["ModifyIndex"], "X-Consul-Index of one key", entry["ModifyIndex"], index)
    created = entry["CreateIndex"]
    steps.ok(f"CreateIndex {created}, X-Consul-Index {index}")

    steps.start("kv missing key")
    # kv: "If no key exists at the given path, a 404 is returned instead of a 200 response."
    index, entry = c.kv.get("app/config/none")
    expect(entry is None, "missing key", None, entry)
    expect(int(index) > 0, "X-Consul-Index of a 404", "> 0", index)
    steps.ok()

    steps.start("kv flags")
    # kv: "flags (int: 0) - Specifies an unsigned value between 0 and (2^64)-1."
    expect(c.kv.put("app/config/flagged", "x", flags=2**64 - 1) is True, "put with flags", True, None)
    _, entry = c.kv.get("app/config/flagged")
    expect(entry["Flags"] == 2**64 - 1, "Flags", 2**64 - 1, entry["Flags"])
    steps.ok()

    steps.start("kv cas")
    # kv: "cas (int: 0) - Specifies to use a Check-And-Set operation. ... If the index is 0,
    # Consul will only put the key if it does not already exist. If the index is non-zero,
    # the key is only set if the index matches the ModifyIndex of that key."
    expect(c.kv.put("app/config/db", "other", cas=0) is False, "cas=0 on an existing key", False, None)
    _, entry = c.kv.get("app/config/db")
    modify = entry["ModifyIndex"]
    expect(c.kv.put("app/config/db", "stale", cas=modify - 1) is False, "cas with a stale index", False, None)
    expect(c.kv.put("app/config/db", "postgres://b", cas=modify) is True, "cas with the index", True, None)
    _, entry = c.kv.get("app/config/db")
    expect(entry["Value"] == b"postgres://b", "value after cas", b"postgres://b", entry["Value"])
    expect(entry["CreateIndex"] == created, "CreateIndex after an update", created, entry["CreateIndex"])
    expect(entry["ModifyIndex"] > modify, "ModifyIndex after an update", f"> {modify}", entry["ModifyIndex"])
    expect(c.kv.put("app/config/new", "n", cas=0) is True, "cas=0 on a missing key", True, None)
    steps.ok()

    steps.start("kv empty value and folders")
    expect(c.kv.put("app/folder/", None) is True, "put a folder key", True, None)
    _, entry = c.kv.get("app/folder/")
    expect(entry is not None and entry["Value"] is None, "empty value", None, entry)
    steps.ok()

    steps.start("kv recurse")
    c.kv.put("app/service/a/port", "80")
    c.kv.put("app/service/b/port", "81")
    index, entries = c.kv.get("app/", recurse=True)
    keys = [e["Key"] for e in entries]
    expect(
        keys
        == [
            "app/config/db",
            "app/config/flagged",
            "app/config/new",
            "app/folder/",
            "app/service/a/port",
            "app/service/b/port",
        ],
        "recurse keys (sorted)",
        "six keys under app/",
        keys,
    )
    expect(int(index) > 0, "X-Consul-Index of a list", "> 0", index)
    steps.ok(f"{len(keys)} entries")

    steps.start("kv keys and separator")
    # kv: "keys (bool: false) - Specifies to return only keys (no values or metadata).
    # Specifying this implies recurse."
    # kv: "separator - Specifies the string to use as a separator for recursive key lookups.
    # This option is only used when paired with the keys parameter to limit the prefix of
    # keys returned, only up to the given separator."
    _, keys = c.kv.get("app/", keys=True)
    expect(len(keys) == 6 and all(isinstance(k, str) for k in keys), "keys", "6 strings", keys)
    _, keys = c.kv.get("app/", keys=True, separator="/")
    expect(keys == ["app/config/", "app/folder/", "app/service/"], "keys with separator", "three folders", keys)
    _, keys = c.kv.get("app/service/", keys=True, separator="/")
    expect(keys == ["app/service/a/", "app/service/b/"], "nested separator", "two folders", keys)
    steps.ok()

    steps.start("kv raw")
    # kv: "raw (bool: false) - Specifies the response is just the raw value of the key,
    # without any encoding or metadata." ... "When using the ?raw endpoint, the response is
    # not application/json, but is instead text/plain."
    status, headers, body = raw_get(c, "/v1/kv/app/config/db", [("raw", "")])
    expect(status == 200 and body == "postgres://b", "raw", (200, "postgres://b"), (status, body))
    content_type = headers.get("Content-Type", "")
    expect(content_type.startswith("text/plain"), "raw Content-Type", "text/plain", content_type)
    expect("X-Consul-Index" in headers, "raw X-Consul-Index", "present", dict(headers))
    steps.ok()

    steps.start("kv delete")
    # kv: "This endpoint deletes a single key or all keys sharing a prefix." ... "cas ...
    # If the index is non-zero, the key is only deleted if the index matches the
    # ModifyIndex of that key."
    _, entry = c.kv.get("app/config/new")
    expect(c.kv.delete("app/config/new", cas=entry["ModifyIndex"] + 1) is False, "delete with a stale cas", False, None)
    expect(c.kv.delete("app/config/new", cas=entry["ModifyIndex"]) is True, "delete with cas", True, None)
    expect(c.kv.get("app/config/new")[1] is None, "deleted key", None, "an entry")
    expect(c.kv.delete("app/service", recurse=True) is True, "recursive delete", True, None)
    _, left = c.kv.get("app/", keys=True)
    expect(not any(k.startswith("app/service") for k in left), "keys after a recursive delete", "none under app/service", left)
    steps.ok()


def blocking_query(c, other, steps):
    steps.start("kv blocking query")
    # Blocking queries: "the client can set the index query string parameter to the value
    # of X-Consul-Index, indicating that the client wishes to wait for any changes
    # subsequent to that index. When this is provided, the HTTP request will "hang" until a
    # change in the system occurs, or the maximum timeout is reached." The change here is
    # written through another node.
    c.kv.put("watch/me", "1")
    index, _ = c.kv.get("watch/me")
    result = {}

    def block():
        started = time.monotonic()
        result["answer"] = c.kv.get("watch/me", index=index, wait="30s")
        result["waited"] = time.monotonic() - started

    thread = threading.Thread(target=block)
    thread.start()
    time.sleep(0.5)  # a client action: the change comes while the query is blocked
    expect(thread.is_alive(), "blocking query before the change", "still waiting", result)
    changed_at = time.monotonic()
    other.kv.put("watch/me", "2")
    thread.join(timeout=10)
    expect(not thread.is_alive(), "blocking query after the change", "returned", "still waiting")
    new_index, entry = result["answer"]
    expect(entry["Value"] == b"2", "value seen by the blocking query", b"2", entry["Value"])
    expect(int(new_index) > int(index), "index after the change", f"> {index}", new_index)
    latency = time.monotonic() - changed_at
    expect(latency < 5, "wake-up latency (s)", "< 5", latency)

    # Blocking queries: "A small random amount of additional wait time is added to the
    # supplied maximum wait time ... This adds up to wait / 16 additional time". Nothing
    # changes, so the index stays.
    started = time.monotonic()
    same_index, _ = c.kv.get("watch/me", index=new_index, wait="1s")
    waited = time.monotonic() - started
    expect(same_index == new_index, "index after a quiet wait", new_index, same_index)
    expect(0.9 <= waited < 5, "quiet wait (s)", "about 1 (plus up to 1/16 jitter)", waited)
    steps.ok(f"woke {latency * 1000:.0f} ms after the change")


def txn_steps(c, steps):
    steps.start("txn rolled back")
    # txn: "If any operation fails, the transaction is rolled back and none of the changes
    # are applied." ... "a status code of 409 will be returned if it was rolled back"
    c.kv.put("bank/alice", "100")
    _, alice = c.kv.get("bank/alice")
    payload = [
        {"KV": {"Verb": "set", "Key": "bank/bob", "Value": base64.b64encode(b"100").decode()}},
        {"KV": {"Verb": "delete", "Key": "bank/alice"}},
        {"KV": {"Verb": "check-index", "Key": "bank/alice", "Index": alice["ModifyIndex"]}},
    ]
    try:
        c.txn.put(payload)
        raise Failure("a transaction with a failing check-index was applied")
    except consul.ConsulException as e:
        text = str(e)
        expect(text.startswith("409"), "status of a rolled-back transaction", "409", text)
        expect('"OpIndex":2' in text.replace(" ", ""), "Errors[].OpIndex", "2", text)
    expect(c.kv.get("bank/bob")[1] is None, "bank/bob after the rollback", "absent", "present")
    expect(c.kv.get("bank/alice")[1] is not None, "bank/alice after the rollback", "present", "deleted")
    steps.ok()

    steps.start("txn applied")
    # txn: "To save space, the Value for KV results will be null for any Verb other than
    # "get" or "get-tree". ... no result entries will be added for verbs that delete keys."
    payload = [
        {"KV": {"Verb": "cas", "Key": "bank/alice", "Value": base64.b64encode(b"60").decode(), "Index": alice["ModifyIndex"]}},
        {"KV": {"Verb": "set", "Key": "bank/bob", "Value": base64.b64encode(b"40").decode(), "Flags": 7}},
        {"KV": {"Verb": "get-tree", "Key": "bank/"}},
        {"KV": {"Verb": "delete", "Key": "bank/nobody"}},
    ]
    answer = c.txn.put(payload)
    results = answer["Results"]
    expect(answer.get("Errors") is None, "Errors", None, answer.get("Errors"))
    expect(len(results) == 4, "result count", 4, results)
    expect(results[0]["KV"]["Value"] is None, "Value of a cas result", None, results[0])
    expect(results[1]["KV"]["Flags"] == 7, "Flags of a set result", 7, results[1])
    tree = {r["KV"]["Key"]: base64.b64decode(r["KV"]["Value"]) for r in results[2:]}
    expect(tree == {"bank/alice": b"60", "bank/bob": b"40"}, "get-tree results", "both accounts", tree)
    revision = results[0]["KV"]["ModifyIndex"]
    expect(results[1]["KV"]["ModifyIndex"] == revision, "one index for the whole transaction", revision, results[1])
    steps.ok(f"committed at index {revision}")


def sessions_and_locks(c, other, steps):
    steps.start("session create and info")
    session = c.session.create(name="kv-test", ttl=30, lock_delay=1)
    _, info = c.session.info(session)
    expect(info is not None and info["ID"] == session, "session info", session, info)
    # session (Read Session sample response): "LockDelay": 15000000000 (nanoseconds),
    # "Behavior": "release", "TTL": "30s", "NodeChecks": ["serfHealth"]
    expect(info["LockDelay"] == 1_000_000_000, "LockDelay (ns)", 1_000_000_000, info["LockDelay"])
    expect(info["TTL"] == "30s", "TTL", "30s", info["TTL"])
    expect(info["Behavior"] == "release", "Behavior", "release", info["Behavior"])
    expect(info["NodeChecks"] == ["serfHealth"], "NodeChecks", ["serfHealth"], info["NodeChecks"])
    node = info["Node"]
    _, sessions = other.session.list()
    expect(session in [s["ID"] for s in sessions], "session list on the other node", session, sessions)
    _, on_node = c.session.node(node)
    expect([s["ID"] for s in on_node] == [session], "sessions of the node", [session], on_node)
    renewed = c.session.renew(session)
    expect(renewed["ID"] == session, "renew", session, renewed)
    steps.ok(f"node {node}")

    steps.start("lock acquire, re-acquire, release")
    # kv: "acquire ... If the lock is not held and the session is valid, this increments the
    # LockIndex and sets the Session value of the key in addition to updating the key
    # contents. ... If the lock is already held by the given session, then the LockIndex is
    # not incremented but the key contents are updated."
    expect(c.kv.put("service/leader", "me", acquire=session) is True, "acquire", True, None)
    _, entry = c.kv.get("service/leader")
    expect(entry["Session"] == session and entry["LockIndex"] == 1, "after acquire", (session, 1), entry)
    expect(c.kv.put("service/leader", "me again", acquire=session) is True, "re-acquire", True, None)
    _, entry = c.kv.get("service/leader")
    expect(entry["LockIndex"] == 1 and entry["Value"] == b"me again", "after re-acquire", (1, b"me again"), entry)
    rival = other.session.create(name="rival", ttl=30, lock_delay=0)
    expect(other.kv.put("service/leader", "rival", acquire=rival) is False, "acquire of a held lock", False, None)
    # kv: "release ... This will leave the LockIndex unmodified but will clear the
    # associated Session of the key. The key must be held by this session to be unlocked."
    expect(other.kv.put("service/leader", "x", release=rival) is False, "release by another session", False, None)
    expect(c.kv.put("service/leader", "bye", release=session) is True, "release", True, None)
    _, entry = c.kv.get("service/leader")
    expect("Session" not in entry and entry["LockIndex"] == 1, "after release", "no Session, LockIndex 1", entry)
    expect(other.kv.put("service/leader", "rival", acquire=rival) is True, "acquire after release", True, None)
    _, entry = other.kv.get("service/leader")
    expect(entry["LockIndex"] == 2, "LockIndex of the second holder", 2, entry["LockIndex"])
    steps.ok()

    steps.start("lock delay after destroy")
    # Sessions overview: "If the release behavior is being used, any of the locks held in
    # association with the session are released, and the ModifyIndex of the key is
    # incremented." ... "When a session invalidation takes place, Consul prevents any of the
    # previously held locks from being re-acquired for the lock-delay interval" ... "clients
    # are able to disable this mechanism by providing a zero delay value."
    other.session.destroy(rival)
    _, entry = c.kv.get("service/leader")
    expect("Session" not in entry, "lock after its session is destroyed", "released", entry)
    # The rival's lock delay is 0 (py-consul sends lock_delay=0 as "0s"): acquiring at once
    # works; the first session's delay (1 s) would apply to a key it held.
    expect(c.kv.put("service/leader", "me", acquire=session) is True, "acquire with no lock delay", True, None)
    c.session.destroy(session)
    delayed = other.session.create(name="delayed", ttl=30)
    refused_at = time.monotonic()
    expect(other.kv.put("service/leader", "d", acquire=delayed) is False, "acquire during the lock delay", False, None)
    while not other.kv.put("service/leader", "d", acquire=delayed):
        expect(time.monotonic() - refused_at < 5, "lock delay of 1 s", "over within 5 s", time.monotonic() - refused_at)
        time.sleep(0.1)
    steps.ok(f"acquired {time.monotonic() - refused_at:.2f} s after the first refusal")

    steps.start("behavior delete")
    # Sessions overview: "if the delete behavior is used, the key corresponding to any of
    # the held locks is simply deleted."
    ephemeral = c.session.create(behavior="delete", ttl=30)
    c.kv.put("members/me", "here", acquire=ephemeral)
    c.session.destroy(ephemeral)
    expect(c.kv.get("members/me")[1] is None, "key of a destroyed delete-behavior session", "deleted", "present")
    expect(c.session.info(ephemeral)[1] is None, "info of a destroyed session", None, "a session")
    other.session.destroy(delayed)
    steps.ok()

    steps.start("session errors")
    # session: renew of an unknown session answers 404 ("Session id '...' not found" in
    # Consul's handler); destroy: "If the session UUID does not exist or already expired, a
    # 200 is still returned (the operation is idempotent)."
    try:
        c.session.renew("00000000-0000-0000-0000-000000000000")
        raise Failure("renewing an unknown session succeeded")
    except consul.NotFound:
        pass
    expect(c.session.destroy("00000000-0000-0000-0000-000000000000") is True, "destroy of an unknown session", True, None)
    # session: "TTL ... Specifies the duration of a session (between 10s and 86400s)".
    # py-consul refuses such a TTL itself, so this one goes around it.
    refused = c.http.put(lambda r: r, "/v1/session/create", data='{"TTL": "5s"}')
    expect(refused.code == 400, "status of a 5 s TTL", 400, (refused.code, refused.body))
    steps.ok()


def startup_calls(c, steps):
    steps.start("members, nodes, datacenters, coordinates")
    members = c.agent.members()
    expect(len(members) == 3 and all(m["Status"] == 1 for m in members), "agent members", "3 alive", members)
    index, nodes = c.catalog.nodes()
    expect(len(nodes) == 3 and int(index) > 0, "catalog nodes", 3, nodes)
    expect(c.catalog.datacenters() == ["dc1"], "datacenters", ["dc1"], c.catalog.datacenters())
    expect(c.coordinate.datacenters()[0]["Datacenter"] == "dc1", "coordinate datacenters", "dc1", None)
    _, coords = c.coordinate.nodes()
    expect(len(coords) == 3 and all(len(x["Coord"]["Vec"]) == 8 for x in coords), "coordinates", 3, coords)
    steps.ok(", ".join(n["Node"] for n in nodes))


def main(argv):
    if len(argv) != 3:
        print(f"usage: {argv[0]} HOST:PORT OTHER_HOST:PORT", file=sys.stderr)
        return 2
    try:
        host, port = parse_addr(argv[1])
        other_host, other_port = parse_addr(argv[2])
    except ValueError as e:
        print(f"usage: {argv[0]} HOST:PORT OTHER_HOST:PORT ({e})", file=sys.stderr)
        return 2
    c = consul.Consul(host=host, port=port)
    other = consul.Consul(host=other_host, port=other_port)
    steps = Steps()
    try:
        kv_crud(c, steps)
        blocking_query(c, other, steps)
        txn_steps(c, steps)
        sessions_and_locks(c, other, steps)
        startup_calls(c, steps)
    except Failure as e:
        print(f"FAIL {steps.current}: {e}", flush=True)
        return 1
    except Exception as e:  # consul.ConsulException, requests errors, malformed answers
        print(f"FAIL {steps.current}: unexpected {type(e).__name__}: {e}", flush=True)
        return 1
    print("consul_kv: all steps passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
