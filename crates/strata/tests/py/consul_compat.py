#!/usr/bin/env python3
"""Drive Strata's Consul-compatible HTTP API with the unmodified py-consul client.

Usage: python3 consul_compat.py HOST:PORT CHECK_TARGET_PORT

  HOST:PORT          the Consul-compatible listener (e.g. 127.0.0.1:7705, [::1]:7705)
  CHECK_TARGET_PORT  port of an HTTP server on 127.0.0.1 that answers GET /health with 200

Prints one line per step. On the first failed expectation it prints what was
expected and what was received and exits 1 (2 for bad usage); exits 0 on success.

Written against py-consul 1.8.0 (`pip install py-consul`, import name `consul`),
which sends its requests with `requests` 2.x through one keep-alive
requests.Session per consul.Consul object.

---------------------------------------------------------------------------
HTTP requests this script makes (as read from py-consul 1.8.0's source)
---------------------------------------------------------------------------
Common to every request:
  * Plain HTTP/1.1, keep-alive. Request headers: User-Agent: python-requests/X,
    Accept-Encoding: gzip, deflate, Accept: */*, Connection: keep-alive.
    X-Consul-Token: <tok> only if CONSUL_HTTP_TOKEN is set in the environment
    (the server should ignore it). No ?dc= param is sent (no dc configured).
    No ?consistent / ?stale (default consistency).
  * PUT bodies are JSON text sent with NO Content-Type header (requests
    does not add one for str data); Content-Length is always present
    (0 for the body-less PUTs below).
  * Paths are percent-quoted with safe="/:", so "service:web-1" arrives
    literally as ".../service:web-1" (colon not escaped).
  * Query strings are urlencoded in the order listed.
  * JSON bodies use py-consul's lower-case keys ("name", "id", "checks",
    "ttl", "http", ...). Real Consul decodes keys case-insensitively
    (and accepts snake_case such as "tagged_addresses"); the server must
    accept these spellings.

How py-consul reads responses (consul/callback.py):
  * "boolean" calls: returns (status == 200). Body ignored. So success MUST
    be exactly 200 (a 204 becomes False). 404 -> False (no exception);
    400 -> BadRequest, 401 -> ACLDisabled, 403 -> ACLPermissionDenied,
    other 4xx -> ClientError, 5xx -> ConsulException.
  * "json" calls: json.loads(body) (so body must be valid JSON; 404 -> None);
    same 4xx/5xx mapping as above.
  * "json+index" calls: as "json", and additionally the X-Consul-Index
    response header is REQUIRED (missing -> ConsulException); the call
    returns (header value as a str, data). This script asserts int(index) > 0.
    (Real Consul also sends X-Consul-KnownLeader / X-Consul-LastContact;
    py-consul ignores them.)
  * Blocking queries (?index=N&wait=D): the client read timeout is
    30 s + wait + wait/16. Consul semantics: hold the request until the
    result's index is > N or wait (+ up to wait/16 jitter) elapses, then
    answer 200 with the current data and current X-Consul-Index (same N if
    nothing changed).

1. agent.service.register(name, service_id=, address=, port=, tags=, meta=, check=)
     PUT /v1/agent/service/register            (no query params)
     body: {"name": str, "id": str, "address": str, "port": int,
            "tags": [str], "meta": {str: str}, "checks": [CHECK]}
       key order as sent: name, id, address, port, tags, meta, checks.
       NOTE: the single check is sent inside a "checks" LIST (not "check").
       Consul names a service's check "service:<service_id>" when the list
       has exactly one element without an id ("service:<id>:<n>", n from 1,
       when there are several); TTL and HTTP checks start "critical".
     CHECK = consul.Check.ttl("10s")   -> {"ttl": "10s"}
           = consul.Check.http(url, interval="1s", timeout="1s")
                                        -> {"http": url, "interval": "1s", "timeout": "1s"}
     response: 200 (body ignored)                               [boolean]
2. agent.service.deregister(service_id)
     PUT /v1/agent/service/deregister/<service_id>   (no params, empty body)
     also removes the service's checks. response: 200           [boolean]
3. agent.check.ttl_pass(check_id) / ttl_warn(check_id) / ttl_fail(check_id)
     PUT /v1/agent/check/pass/<check_id>
     PUT /v1/agent/check/warn/<check_id>
     PUT /v1/agent/check/fail/<check_id>
     (no params here; ?note=<text> only if notes= is given; empty body)
     sets Status to "passing" / "warning" / "critical" and resets the TTL.
     response: 200; unknown check -> Consul answers 404 (py-consul: False) [boolean]
4. catalog.services()
     GET /v1/catalog/services                   (no params)
     response: {"<service name>": [unique tags...], ...}; a service with no
     instances left is absent. Header X-Consul-Index.           [json+index]
5. catalog.service("web")
     GET /v1/catalog/service/web                (no params)
     response: list, one object per instance; this script reads
       "ServiceID", "ServiceName", "ServiceAddress", "ServicePort",
       "ServiceTags", "ServiceMeta" (Consul also has Node, Address,
       Datacenter, ServiceWeights, CreateIndex, ModifyIndex, ...).
     Unknown / no instances -> 200 with [] (not 404, not null).
     Header X-Consul-Index.                                    [json+index]
6. health.service(name, passing=, tag=, index=, wait=)
     GET /v1/health/service/<name>
       params (in this order, each only when given):
         index=<N>     (the X-Consul-Index str from an earlier answer)
         wait=<dur>    (only together with index; here "1s" / "5s")
         passing=1     (passing=True: drop every instance having ANY check
                        whose Status != "passing"; "warning" is dropped too)
         tag=<t>       (repeated once per tag if a list is given)
       calls used here:
         GET /v1/health/service/web
         GET /v1/health/service/web?passing=1
         GET /v1/health/service/web?tag=primary
         GET /v1/health/service/web?index=<N>&wait=1s
         GET /v1/health/service/web?index=<N>&wait=5s
         GET /v1/health/service/api?passing=1
         GET /v1/health/service/api
     response: list of
       {"Node": {"Node": str, "Address": str, ...},
        "Service": {"ID": str, "Service": str, "Tags": [str],
                    "Address": str, "Port": int, "Meta": {str: str}, ...},
        "Checks": [{"CheckID": str, "Name": str, "Status": str,
                    "ServiceID": str, "ServiceName": str, ...}, ...]}
     this script reads Service.ID/Service/Tags/Address/Port/Meta and
     Checks[].CheckID/Status/ServiceID. Unknown -> 200 with [].
     Header X-Consul-Index (must grow when a check's status changes).
                                                                [json+index]
7. status.leader()
     GET /v1/status/leader                      (no params)
     response: a JSON string, e.g. "127.0.0.1:8300" (quotes included in the
     body). No index header needed.                            [json]
8. agent.self()
     GET /v1/agent/self                         (no params)
     response: JSON object; this script reads
       {"Config": {"Datacenter": str, "NodeName": str, ...}, ...}
     (Consul also has "Member", "Stats", "Meta", ...).          [json]
---------------------------------------------------------------------------
"""

from __future__ import annotations

import sys
import threading
import time

import consul

WEB1 = "web-1"
WEB2 = "web-2"
API1 = "api-1"
CHECK_WEB1 = "service:" + WEB1
CHECK_WEB2 = "service:" + WEB2
CHECK_API1 = "service:" + API1


class Failure(Exception):
    pass


def expect(cond, what, expected, received):
    if not cond:
        raise Failure(f"{what}\n  expected: {expected}\n  received: {received!r}")


def index_int(idx, what):
    try:
        n = int(idx)
    except (TypeError, ValueError):
        raise Failure(f"{what}\n  expected: an int-like X-Consul-Index\n  received: {idx!r}") from None
    expect(n > 0, what, "a positive X-Consul-Index", idx)
    return n


def health(c, name, **kw):
    """health.service(name, **kw) -> (int index, list), checking both."""
    what = f"health.service({name!r}{''.join(f', {k}={v!r}' for k, v in kw.items())})"
    idx, data = c.health.service(name, **kw)
    n = index_int(idx, what + " index")
    expect(isinstance(data, list), what + " data type", "a list", data)
    return n, data


def catalog_service(c, name):
    idx, data = c.catalog.service(name)
    n = index_int(idx, f"catalog.service({name!r}) index")
    expect(isinstance(data, list), f"catalog.service({name!r}) data type", "a list", data)
    return n, data


def catalog_services(c):
    idx, data = c.catalog.services()
    n = index_int(idx, "catalog.services() index")
    expect(isinstance(data, dict), "catalog.services() data type", "a dict", data)
    return n, data


def ids(entries, key):
    """IDs of catalog (key='ServiceID') or health (key=None) entries."""
    if key is None:
        return sorted(e["Service"]["ID"] for e in entries)
    return sorted(e[key] for e in entries)


def summary(entries):
    """Compact view of health entries for failure messages."""
    out = []
    for e in entries or []:
        svc = e.get("Service", {})
        checks = {c.get("CheckID"): c.get("Status") for c in e.get("Checks", [])}
        out.append({"ID": svc.get("ID"), "Tags": svc.get("Tags"), "Checks": checks})
    return out


def check_status(entries, service_id, check_id):
    for e in entries:
        if e["Service"]["ID"] == service_id:
            for c in e["Checks"]:
                if c["CheckID"] == check_id:
                    expect(
                        c.get("ServiceID") == service_id,
                        f"check {check_id}'s ServiceID",
                        service_id,
                        c.get("ServiceID"),
                    )
                    return c["Status"]
            raise Failure(
                f"health entry of {service_id} has no check {check_id}\n"
                f"  expected: a check with CheckID {check_id!r}\n"
                f"  received: {[c.get('CheckID') for c in e['Checks']]!r}"
            )
    raise Failure(
        f"no health entry for {service_id}\n  expected: an entry with Service.ID {service_id!r}\n"
        f"  received: {summary(entries)!r}"
    )


def parse_addr(arg):
    host, sep, port = arg.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"bad HOST:PORT {arg!r}")
    return host, int(port)


class Steps:
    def __init__(self):
        self.current = "setup"

    def start(self, name):
        self.current = name

    def ok(self, detail=""):
        print(f"ok   {self.current}{': ' + detail if detail else ''}", flush=True)


def run(host, port, check_port, steps):
    c = consul.Consul(host=host, port=port, scheme="http")

    # 1. register web-1 with a TTL check
    steps.start("1 register web-1 (TTL check)")
    r = c.agent.service.register(
        "web",
        service_id=WEB1,
        address="127.0.0.1",
        port=8080,
        tags=["v1", "primary"],
        meta={"ver": "1"},
        check=consul.Check.ttl("10s"),
    )
    expect(r is True, "agent.service.register(web-1) result", True, r)
    steps.ok()

    # 2. register web-2 with a TTL check
    steps.start("2 register web-2 (TTL check)")
    r = c.agent.service.register(
        "web",
        service_id=WEB2,
        address="127.0.0.1",
        port=8081,
        tags=["v1"],
        meta={"ver": "2"},
        check=consul.Check.ttl("10s"),
    )
    expect(r is True, "agent.service.register(web-2) result", True, r)
    steps.ok()

    # 3. pass web-1's TTL check; web-2's stays critical
    steps.start("3 ttl_pass service:web-1")
    r = c.agent.check.ttl_pass(CHECK_WEB1)
    expect(r is True, f"agent.check.ttl_pass({CHECK_WEB1}) result", True, r)
    steps.ok()

    # 4. catalog
    steps.start("4 catalog.services / catalog.service")
    idx, services = catalog_services(c)
    expect("web" in services, "catalog.services() has 'web'", "a dict with key 'web'", services)
    expect(
        isinstance(services["web"], list) and sorted(services["web"]) == ["primary", "v1"],
        "catalog.services()['web'] tags (any order, no duplicates)",
        ["primary", "v1"],
        services["web"],
    )
    idx, nodes = catalog_service(c, "web")
    expect(ids(nodes, "ServiceID") == [WEB1, WEB2], "catalog.service('web') ServiceIDs", [WEB1, WEB2], nodes)
    want = {
        WEB1: {"ServiceName": "web", "ServiceAddress": "127.0.0.1", "ServicePort": 8080,
               "ServiceTags": ["primary", "v1"], "ServiceMeta": {"ver": "1"}},
        WEB2: {"ServiceName": "web", "ServiceAddress": "127.0.0.1", "ServicePort": 8081,
               "ServiceTags": ["v1"], "ServiceMeta": {"ver": "2"}},
    }
    for n in nodes:
        w = want[n["ServiceID"]]
        got = {k: n.get(k) for k in w}
        if isinstance(got["ServiceTags"], list):
            got["ServiceTags"] = sorted(got["ServiceTags"])
        expect(got == w, f"catalog.service('web') entry {n['ServiceID']}", w, got)
    steps.ok(f"index {idx}")

    # 5. health
    steps.start("5 health.service (passing / all / tag)")
    idx, entries = health(c, "web", passing=True)
    expect(ids(entries, None) == [WEB1], "health.service('web', passing=True) instances", [WEB1], summary(entries))
    svc = entries[0]["Service"]
    got = {"Service": svc.get("Service"), "Address": svc.get("Address"), "Port": svc.get("Port"),
           "Tags": sorted(svc.get("Tags") or []), "Meta": svc.get("Meta")}
    w = {"Service": "web", "Address": "127.0.0.1", "Port": 8080, "Tags": ["primary", "v1"], "Meta": {"ver": "1"}}
    expect(got == w, "health.service('web', passing=True)[0]['Service']", w, got)
    expect(check_status(entries, WEB1, CHECK_WEB1) == "passing", f"{CHECK_WEB1} Status", "passing", summary(entries))

    idx, entries = health(c, "web")
    expect(ids(entries, None) == [WEB1, WEB2], "health.service('web') instances", [WEB1, WEB2], summary(entries))
    expect(check_status(entries, WEB1, CHECK_WEB1) == "passing", f"{CHECK_WEB1} Status", "passing", summary(entries))
    expect(check_status(entries, WEB2, CHECK_WEB2) == "critical",
           f"{CHECK_WEB2} Status (TTL checks start critical)", "critical", summary(entries))

    idx, entries = health(c, "web", tag="primary")
    expect(ids(entries, None) == [WEB1], "health.service('web', tag='primary') instances", [WEB1], summary(entries))
    steps.ok(f"index {idx}")

    # 6. blocking query woken by a check status change
    steps.start("6 blocking health.service woken by ttl_pass service:web-2")
    idx, entries = c.health.service("web")  # keep the raw X-Consul-Index str to send back
    before = index_int(idx, "health.service('web') index before the blocking query")
    expect(isinstance(entries, list), "health.service('web') data type", "a list", entries)
    expect(check_status(entries, WEB2, CHECK_WEB2) == "critical", f"{CHECK_WEB2} Status before ttl_pass",
           "critical", summary(entries))

    result = {}

    def blocking():
        bc = consul.Consul(host=host, port=port, scheme="http")
        t0 = time.monotonic()
        try:
            result["value"] = bc.health.service("web", index=idx, wait="5s")
        except BaseException as e:  # reported by the main thread
            result["error"] = e
        result["elapsed"] = time.monotonic() - t0

    th = threading.Thread(target=blocking, daemon=True)
    th.start()

    # While the 5 s query is held, a 1 s blocking query on the same index runs on
    # this thread. It must hold for its whole wait and come back with the same
    # index (nothing changed); by then the 5 s query has long reached the server,
    # so the ttl_pass below really has to wake a parked query. No fixed sleep.
    hc = consul.Consul(host=host, port=port, scheme="http")
    t0 = time.monotonic()
    hidx, _ = hc.health.service("web", index=idx, wait="1s")
    held = time.monotonic() - t0
    expect(held >= 0.9, "blocking health.service(index=N, wait='1s') with no change: time held",
           ">= 0.9 s (the server must hold the query for its wait)", f"{held:.3f} s")
    expect(held < 4.0, "blocking health.service(index=N, wait='1s') with no change: time held", "< 4 s", f"{held:.3f} s")
    expect(index_int(hidx, "index after a 1 s wait with no change") == before,
           "index after a 1 s blocking wait with no change", before, hidx)
    expect(th.is_alive(), "5 s blocking query still parked before ttl_pass",
           "still waiting (nothing changed yet)", result)

    r = c.agent.check.ttl_pass(CHECK_WEB2)
    expect(r is True, f"agent.check.ttl_pass({CHECK_WEB2}) result", True, r)
    th.join(timeout=15)
    expect(not th.is_alive(), "5 s blocking query finished", "returned", "still running after 15 s")
    if "error" in result:
        raise Failure(f"blocking health.service raised\n  expected: (index, entries)\n  received: {result['error']!r}")
    elapsed = result["elapsed"]
    expect(elapsed < 4.0, "blocking health.service(index=N, wait='5s') returned before its wait",
           "< 4 s", f"{elapsed:.3f} s")
    bidx, entries = result["value"]
    after = index_int(bidx, "index returned by the blocking query")
    expect(isinstance(entries, list), "blocking health.service('web') data type", "a list", entries)
    expect(after > before, "index returned by the woken blocking query", f"> {before}", bidx)
    expect(ids(entries, None) == [WEB1, WEB2], "blocking health.service('web') instances", [WEB1, WEB2], summary(entries))
    expect(check_status(entries, WEB2, CHECK_WEB2) == "passing", f"{CHECK_WEB2} Status in the woken query's answer",
           "passing", summary(entries))
    steps.ok(f"held {held:.2f} s, woken after {elapsed:.2f} s, index {before} -> {after}")

    # 7. warn / fail web-1
    steps.start("7 ttl_warn / ttl_fail service:web-1")
    for call, status in ((c.agent.check.ttl_warn, "warning"), (c.agent.check.ttl_fail, "critical")):
        r = call(CHECK_WEB1)
        expect(r is True, f"agent.check.{call.__name__}({CHECK_WEB1}) result", True, r)
        idx, entries = health(c, "web")
        expect(check_status(entries, WEB1, CHECK_WEB1) == status, f"{CHECK_WEB1} Status after {call.__name__}",
               status, summary(entries))
        idx, entries = health(c, "web", passing=True)
        expect(ids(entries, None) == [WEB2], f"health.service('web', passing=True) after {call.__name__}",
               [WEB2], summary(entries))
    steps.ok()

    # 8. status / agent self
    steps.start("8 status.leader / agent.self")
    leader = c.status.leader()
    expect(isinstance(leader, str) and leader != "", "status.leader()", "a non-empty string", leader)
    me = c.agent.self()
    expect(isinstance(me, dict) and isinstance(me.get("Config"), dict), "agent.self()",
           "a dict with a 'Config' object", me)
    for k in ("Datacenter", "NodeName"):
        v = me["Config"].get(k)
        expect(isinstance(v, str) and v != "", f"agent.self()['Config']['{k}']", "a non-empty string", v)
    steps.ok(f"leader {leader!r}, dc {me['Config']['Datacenter']!r}, node {me['Config']['NodeName']!r}")

    # 9. deregister web-1 and web-2
    steps.start("9 deregister web-1 / web-2")
    for sid in (WEB1, WEB2):
        r = c.agent.service.deregister(sid)
        expect(r is True, f"agent.service.deregister({sid}) result", True, r)
    idx, nodes = catalog_service(c, "web")
    expect(nodes == [], "catalog.service('web') after deregistration", [], nodes)
    idx, services = catalog_services(c)
    expect("web" not in services, "catalog.services() after deregistration",
           "a dict without 'web'", services)
    steps.ok()

    # 10. HTTP check
    steps.start("10 api-1 with an HTTP check becomes passing")
    url = f"http://127.0.0.1:{check_port}/health"
    r = c.agent.service.register(
        "api",
        service_id=API1,
        address="127.0.0.1",
        port=check_port,
        check=consul.Check.http(url, interval="1s", timeout="1s"),
    )
    expect(r is True, "agent.service.register(api-1) result", True, r)
    t0 = time.monotonic()
    deadline = t0 + 10.0
    while True:
        idx, entries = health(c, "api", passing=True)
        if any(e["Service"]["ID"] == API1 for e in entries):
            break
        if time.monotonic() >= deadline:
            _, all_entries = health(c, "api")
            raise Failure(
                f"api-1 never became passing (HTTP check of {url})\n"
                f"  expected: health.service('api', passing=True) to list {API1} within 10 s\n"
                f"  received: passing={summary(entries)!r}, all={summary(all_entries)!r}"
            )
        time.sleep(0.1)
    expect(check_status(entries, API1, CHECK_API1) == "passing", f"{CHECK_API1} Status", "passing", summary(entries))
    took = time.monotonic() - t0
    r = c.agent.service.deregister(API1)
    expect(r is True, f"agent.service.deregister({API1}) result", True, r)
    idx, entries = health(c, "api")
    expect(entries == [], "health.service('api') after deregistration", [], summary(entries))
    steps.ok(f"passing after {took:.2f} s")


def cleanup(host, port):
    """Best effort after a failure, so a reused server is not left dirty."""
    try:
        cc = consul.Consul(host=host, port=port, scheme="http", connections_timeout=2)
        for sid in (WEB1, WEB2, API1):
            try:
                cc.agent.service.deregister(sid)
            except Exception:
                pass
    except Exception:
        pass


def main(argv):
    if len(argv) != 3:
        print(f"usage: {argv[0]} HOST:PORT CHECK_TARGET_PORT", file=sys.stderr)
        return 2
    try:
        host, port = parse_addr(argv[1])
        check_port = int(argv[2])
    except ValueError as e:
        print(f"usage: {argv[0]} HOST:PORT CHECK_TARGET_PORT ({e})", file=sys.stderr)
        return 2

    print(f"py-consul {consul.__version__} against {host}:{port}, check target port {check_port}", flush=True)
    steps = Steps()
    try:
        run(host, port, check_port, steps)
    except Failure as e:
        print(f"FAIL {steps.current}: {e}", flush=True)
        cleanup(host, port)
        return 1
    except Exception as e:  # consul.ConsulException, requests errors, malformed answers (KeyError, ...)
        print(f"FAIL {steps.current}: unexpected {type(e).__name__}: {e}", flush=True)
        cleanup(host, port)
        return 1
    print("consul_compat: all steps passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
