#!/usr/bin/env python3
"""Drive Strata's Nacos-compatible HTTP API with the unmodified nacos-sdk-python client.

Usage: python3 nacos_compat.py HOST:PORT

  HOST:PORT  the Nacos-compatible listener (e.g. 127.0.0.1:7848). An IPv4 address or a
             host name: the package splits the address on ":" and cannot take an IPv6
             literal.

Prints one line per step. On the first failed expectation it prints what was
expected and what was received and exits 1 (2 for bad usage); exits 0 on success.

Written against nacos-sdk-python 2.0.11 (`pip install nacos-sdk-python==2.0.11`,
import name `nacos`). In that release the top-level `nacos` package is the old
HTTP-only client (Nacos open-API v1; its own VERSION string still says 0.1.16,
and it sends "User-Agent: Nacos-Python-Client:v0.1.16"); the gRPC client is the
separate `v2.nacos` package, which this script does not import. 3.x ships only
`v2` (gRPC), so `import nacos` fails there. 1.0.0 (== 0.1.17, no dependencies)
has the same HTTP client with the differences marked [1.0.0] below; this script
works with both.

Each NacosClient call is one urllib request (urllib.request.urlopen, new TCP
connection each time, "Connection: close"), to http://HOST:PORT + path.

---------------------------------------------------------------------------
HTTP requests this script makes (read from the package source, checked
against a mock server)
---------------------------------------------------------------------------
Common to every request:
  * HTTP/1.1; headers: Accept-Encoding: identity, Host,
    User-Agent: Nacos-Python-Client:v0.1.16 ([1.0.0]: v1.0.0),
    Connection: close, plus Content-Type: application/x-www-form-urlencoded
    and Content-Length: N when there is a form body (and the long-poll
    header in 4). urllib title-cases header names; match them
    case-insensitively anyway.
  * A POST/PUT/DELETE without a form body has NO Content-Type (POST/PUT get
    Content-Length: 0, DELETE none). Parameters are in the query string
    except where a form body is noted. Read parameters from the query string
    AND the form body (as Nacos does), since 1.0.0 and 2.0.11 put the publish
    parameters in different places.
  * Query/body values are urlencoded with quote_plus (space -> "+").
    Python values are stringified with str(): booleans arrive as "True" /
    "False" (capitalized: parse case-insensitively), weights as "1.0",
    None as the literal "None" (see clusterName below).
  * No tenant/namespaceId parameter is sent for the public namespace: the
    client is created with namespace="" (the package's DEFAULT_NAMESPACE is
    ""), and every tenant/namespaceId parameter is only added when the
    namespace is non-empty. An absent/empty tenant means the public namespace
    ("public" in naming answers).
  * No auth parameters/headers (no ak/sk, no username/password).
  * Error handling common to all calls: 500/502/503, timeouts and connection
    errors make the client try the next server (there is one), then raise
    NacosRequestException("All server are not available"); 403 ->
    NacosException("Insufficient privilege."); other non-2xx -> NacosException
    ("Request Error, code is N") (get_config: see 2). Response Content-Type is
    never looked at.

1. publish_config("app.yaml", "DEFAULT_GROUP", "a: 1\\n", config_type="yaml")
     POST /nacos/v1/cs/configs
     form body (2.0.11): dataId=app.yaml&group=DEFAULT_GROUP&content=a%3A+1%0A&type=yaml
       ([1.0.0]: the same four parameters in the query string, no body)
       (appName=<x> only if app_name= is given; tenant=<ns> only for a
       non-public namespace)
     response: 200, body exactly "true" (no newline; client tests
       body == b"true", anything else -> False). Nacos sends
       application/json.
2. get_config("app.yaml", "DEFAULT_GROUP", no_snapshot=True)
     GET /nacos/v1/cs/configs?dataId=app.yaml&group=DEFAULT_GROUP
     response: 200, body = the raw content bytes (decoded as UTF-8, returned
       unchanged: no trailing newline may be added). Missing config: 404
       (any body; Nacos: "config data not exist") -> returns None.
       409 -> None; any other error raises with no_snapshot=True (without it
       the client silently falls back to its local snapshot copy).
3. remove_config("app.yaml", "DEFAULT_GROUP")
     DELETE /nacos/v1/cs/configs?dataId=app.yaml&group=DEFAULT_GROUP
     response: 200, body exactly "true" (also when it did not exist: Nacos
       answers true). Must wake held long-polls on that key.
4. add_config_watcher("app.yaml", "DEFAULT_GROUP", cb)
     first does a get_config (as 2, but without no_snapshot, so it stores a
     snapshot file) and remembers md5(content); then starts one puller thread
     that loops (2.0.11 sleeps 1 s before each round; [1.0.0] does not, so a
     server that answers a long-poll at once with nothing would make it spin):
       POST /nacos/v1/cs/configs/listener
       header: Long-Pulling-Timeout: 30000            (ms)
       form body: Listening-Configs=<probe>
         (2.0.11 adds ?tenant=<ns> to the query for a non-public namespace)
       probe = for each watched key:
               dataId \\x02 group \\x02 md5 \\x02 tenant \\x01
               i.e. here "app.yaml\\x02DEFAULT_GROUP\\x02<md5>\\x02\\x01"
               (the tenant field is present but EMPTY for the public namespace;
               md5 = lowercase hex MD5 of the UTF-8 content the client holds,
               "" when it holds none, i.e. before its first read or when the
               config does not exist), form-encoded on the wire:
               Listening-Configs=app.yaml%02DEFAULT_GROUP%02e0ccdaf42c593022e15b18cc0e96d201%02%01
               (md5 of "a: 1\n")
       client read timeout: 40 s (pulling_timeout 30 + 10).
       server: answer at once if any listed key's current md5 differs from
       the probe's (a missing config has md5 ""); otherwise hold the request
       until one of them changes (publish or delete) or the timeout (Nacos
       holds Long-Pulling-Timeout - 500 ms) runs out, then answer.
       response: 200, body = URL-encoding (Java URLEncoder style; the client
         runs unquote_plus over the whole body) of, per changed key,
           dataId \\x02 group [\\x02 tenant] \\x01
         e.g. "app.yaml%02DEFAULT_GROUP%01" (Nacos omits the tenant field when
         empty; "app.yaml%02DEFAULT_GROUP%02%01" parses the same; a trailing
         "\\n", as Nacos's println adds, is ignored). Nothing changed: 200 with an
         empty body. dataId and group must come back exactly as sent, since
         the client matches "dataId+group+tenant" against its watch keys.
     For each changed key the client then GETs the config (as 2, without
     no_snapshot; 404 -> None) and calls cb({"data_id", "group", "namespace",
     "raw_content", "content"}) when md5(content) differs from the last one
     the callback saw. A non-2xx answer to the long-poll is logged and the
     round retried.
5. remove_config_watcher("app.yaml", "DEFAULT_GROUP", cb, remove_all=True)
     no request; the puller thread stops after its current long-poll returns.
6. add_naming_instance("orders", "127.0.0.1", 8080, ephemeral=True, metadata={"v": "1"})
     POST /nacos/v1/ns/instance  (query only, no body, Content-Length: 0):
       ip=127.0.0.1&port=8080&serviceName=orders&weight=1.0&enable=True
       &healthy=True&clusterName=None&ephemeral=True&groupName=DEFAULT_GROUP
       &metadata=%7B%22v%22%3A+%221%22%7D     (metadata = json.dumps: {"v": "1"})
     NOTE clusterName=None: the package stringifies cluster_name=None; the
       server should take "None" (and "") as the default cluster "DEFAULT"
       (real Nacos would create a cluster literally named "None").
     response: 200, body exactly "ok" (client tests body == b"ok").
     (No heartbeat thread unless heartbeat_interval= is given; not used here.)
7. list_naming_instance("orders", healthy_only=True)
     GET /nacos/v1/ns/instance/list?serviceName=orders&healthyOnly=True&groupName=DEFAULT_GROUP
       (healthyOnly=False when not asked; clusters=<csv> and namespaceId=<ns>
       only when given / non-public)
     response: 200, JSON object (json.loads of the body), Nacos 2.x shape:
       {"name": "DEFAULT_GROUP@@orders", "groupName": "DEFAULT_GROUP",
        "clusters": "", "cacheMillis": 10000, "lastRefTime": <ms>,
        "checksum": "", "allIPs": false, "reachProtectionThreshold": false,
        "valid": true,
        "hosts": [{"instanceId": "127.0.0.1#8080#DEFAULT#DEFAULT_GROUP@@orders",
                   "ip": "127.0.0.1", "port": 8080, "weight": 1.0,
                   "healthy": true, "enabled": true, "ephemeral": true,
                   "clusterName": "DEFAULT",
                   "serviceName": "DEFAULT_GROUP@@orders",
                   "metadata": {"v": "1"},
                   "instanceHeartBeatInterval": 5000,
                   "instanceHeartBeatTimeOut": 15000,
                   "ipDeleteTimeout": 30000}]}
     This script reads hosts[].ip/port(int)/healthy(bool)/weight(number)/
     metadata(object)/instanceId(str). (The package's own subscribe() needs
     "hosts" and hosts[].instanceId.) Unknown service: 200 with "hosts": [].
     healthyOnly=True drops unhealthy instances.
8. send_heartbeat("orders", "127.0.0.1", 8080)
     PUT /nacos/v1/ns/instance/beat  (query only, no body, Content-Length: 0):
       serviceName=DEFAULT_GROUP%40%40orders&beat=<json>&groupName=DEFAULT_GROUP
       (serviceName is prefixed "<group>@@" by the client; ip/port are
       only inside beat)
       beat = {"serviceName": "DEFAULT_GROUP@@orders", "ip": "127.0.0.1",
               "port": 8080, "weight": 1.0, "ephemeral": true}
              (+ "cluster": <name> and "metadata": {..} only when given)
     response: 200, JSON object (json.loads of the body; the package returns it
       as is). Nacos: {"clientBeatInterval": 5000, "code": 10200,
       "lightBeatEnabled": false}; code 20404 when the instance is unknown.
       This script requires code == 10200 (the instance exists).
9. remove_naming_instance("orders", "127.0.0.1", 8080)
     DELETE /nacos/v1/ns/instance?ip=127.0.0.1&port=8080&serviceName=orders
       &ephemeral=True&groupName=DEFAULT_GROUP   (no clusterName unless given)
     response: 200, body exactly "ok" (Nacos also answers ok for an unknown
       instance). Match the instance by namespace+group+service+ip+port (the
       registration's cluster "None"/DEFAULT is not repeated here).
---------------------------------------------------------------------------
Shutdown: the first add_config_watcher starts a multiprocessing Manager (a
child process, never stopped by the package: it would outlive this script and
keep the caller's stdout/stderr pipes open), a ThreadPool and a multiprocessing
Queue; the puller thread is a daemon blocked in its long-poll. This script has
the package start that Manager without stdio and with a parent-death signal,
shuts it down at the end, terminates the pool, and ends with os._exit so a held
long-poll cannot delay the exit (the whole run takes about 2 s).
"""

from __future__ import annotations

import io
import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time

# The package uses urllib, which honours proxy variables; the listener is local.
os.environ["no_proxy"] = os.environ["NO_PROXY"] = "*"

import nacos  # noqa: E402
import nacos.client as nacos_client_module  # noqa: E402

try:
    from importlib.metadata import version as _dist_version

    PKG_VERSION = _dist_version("nacos-sdk-python")
except Exception:  # pragma: no cover - metadata missing
    PKG_VERSION = "?"

DATA_ID = "app.yaml"
GROUP = "DEFAULT_GROUP"
SERVICE = "orders"
IP = "127.0.0.1"
PORT = 8080
LISTENER_PATH = "/nacos/v1/cs/configs/listener"


class Failure(Exception):
    pass


def expect(cond, what, expected, received):
    if not cond:
        raise Failure(f"{what}\n  expected: {expected!r}\n  received: {received!r}")


class Steps:
    def __init__(self):
        self.current = "setup"

    def start(self, name):
        self.current = name

    def ok(self, detail=""):
        print(f"ok   {self.current}{': ' + detail if detail else ''}", flush=True)


class PollSpy:
    """Wraps client._do_sync_req to watch the package's long-polls (never changes them)."""

    def __init__(self, client):
        self.lock = threading.Lock()
        self.polls = []  # dicts: start, end, body / error
        orig = client._do_sync_req

        def wrapped(url, *args, **kwargs):
            if url != LISTENER_PATH:
                return orig(url, *args, **kwargs)
            rec = {"start": time.monotonic(), "end": None}
            with self.lock:
                self.polls.append(rec)
            try:
                resp = orig(url, *args, **kwargs)
                body = resp.read()
                rec["body"] = body
                return io.BytesIO(body)
            except Exception as e:
                rec["error"] = f"{type(e).__name__}: {e}"
                raise
            finally:
                rec["end"] = time.monotonic()

        client._do_sync_req = wrapped

    def held_poll(self, min_held):
        """True once some long-poll has been outstanding for at least min_held seconds."""
        now = time.monotonic()
        with self.lock:
            return any((p["end"] or now) - p["start"] >= min_held for p in self.polls)

    def summary(self, last=8):
        with self.lock:
            polls = self.polls[-last:]
            out = [f"{len(self.polls)} long-polls, last {len(polls)}:"] if len(self.polls) > last else []
            for p in polls:
                end = p["end"]
                took = f"{end - p['start']:.2f}s" if end is not None else "in flight"
                out.append((took, p.get("body", p.get("error"))))
            return out


def _manager_init(parent_pid):
    """Runs in the Manager process: drop the inherited stdio and die with this script."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except Exception:
        pass
    if os.getppid() != parent_pid:
        os._exit(0)


def _detached_manager():
    """Stand-in for multiprocessing.Manager() inside the package (first add_config_watcher).

    The package starts a Manager server process and never stops it; a process that
    outlives this script keeps the caller's stdout/stderr pipes open, and a caller that
    reads them to EOF then hangs. Same SyncManager, started so that it holds no stdio
    and is killed when this script dies (even by SIGKILL). It sends no requests.
    """
    from multiprocessing.managers import SyncManager

    m = SyncManager()
    m.start(_manager_init, (os.getpid(),))
    return m


def find_host(result, ip, port):
    hosts = result.get("hosts") if isinstance(result, dict) else None
    if not isinstance(hosts, list):
        raise Failure(f"list_naming_instance({SERVICE!r}) answer\n  expected: a JSON object with a "
                      f"'hosts' list\n  received: {result!r}")
    return [h for h in hosts if isinstance(h, dict) and h.get("ip") == ip and h.get("port") == port]


def run(addr, client, spy, steps):
    # a. publish + get
    steps.start("a publish_config + get_config")
    r = client.publish_config(DATA_ID, GROUP, "a: 1\n", config_type="yaml")
    expect(r is True, f"publish_config({DATA_ID!r}, {GROUP!r}, 'a: 1\\n', config_type='yaml')", True, r)
    got = client.get_config(DATA_ID, GROUP, no_snapshot=True)
    expect(got == "a: 1\n", f"get_config({DATA_ID!r}, {GROUP!r})", "a: 1\n", got)
    steps.ok()

    # b. watcher
    steps.start("b add_config_watcher sees a publish")
    events = queue.Queue()

    def on_change(params):
        events.put(params)

    client.add_config_watcher(DATA_ID, GROUP, on_change)
    # Publish once the package's long-poll is being held by the server, so the change
    # must wake a held request (the server may also answer at once on an md5 mismatch).
    deadline = time.monotonic() + 5.0
    while not spy.held_poll(0.3):
        if time.monotonic() >= deadline:
            raise Failure("no held long-poll\n  expected: a POST " + LISTENER_PATH
                          + " held open by the server (no change yet) within 5 s\n"
                          + f"  received: polls (duration, body) = {spy.summary()!r}")
        time.sleep(0.05)
    t0 = time.monotonic()
    r = client.publish_config(DATA_ID, GROUP, "a: 2\n", config_type="yaml")
    expect(r is True, "publish_config(... 'a: 2\\n')", True, r)
    deadline = t0 + 10.0
    seen = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Failure("watcher callback not called with the new content within 10 s\n"
                          "  expected: content 'a: 2\\n'\n"
                          f"  received: callbacks {seen!r}; long-polls (duration, body) {spy.summary()!r}")
        try:
            ev = events.get(timeout=min(left, 0.1))
        except queue.Empty:
            continue
        seen.append(ev)
        expect(ev.get("content") == "a: 2\n", "watcher callback content", "a: 2\n", ev)
        expect(ev.get("data_id") == DATA_ID and ev.get("group") == GROUP,
               "watcher callback data_id/group", (DATA_ID, GROUP), ev)
        break
    took = time.monotonic() - t0
    client.remove_config_watcher(DATA_ID, GROUP, on_change, remove_all=True)
    steps.ok(f"callback after {took:.2f} s")

    # c. remove
    steps.start("c remove_config")
    r = client.remove_config(DATA_ID, GROUP)
    expect(r is True, f"remove_config({DATA_ID!r}, {GROUP!r})", True, r)
    got = client.get_config(DATA_ID, GROUP, no_snapshot=True)
    expect(got is None, f"get_config({DATA_ID!r}, {GROUP!r}) after remove", None, got)
    steps.ok()

    # d. naming
    steps.start("d add_naming_instance + list_naming_instance")
    r = client.add_naming_instance(SERVICE, IP, PORT, ephemeral=True, metadata={"v": "1"})
    expect(r is True, f"add_naming_instance({SERVICE!r}, {IP!r}, {PORT})", True, r)
    res = client.list_naming_instance(SERVICE, healthy_only=True)
    found = find_host(res, IP, PORT)
    expect(len(found) == 1, f"list_naming_instance({SERVICE!r}, healthy_only=True) hosts with {IP}:{PORT}",
           "exactly one", res)
    h = found[0]
    expect(h.get("healthy") is True, "host.healthy", True, h)
    expect(isinstance(h.get("weight"), (int, float)) and not isinstance(h.get("weight"), bool)
           and float(h["weight"]) == 1.0, "host.weight", 1.0, h)
    expect(h.get("metadata") == {"v": "1"}, "host.metadata", {"v": "1"}, h)
    expect(isinstance(h.get("instanceId"), str) and h["instanceId"] != "", "host.instanceId",
           "a non-empty string", h)
    steps.ok(f"instanceId {h['instanceId']}")

    steps.start("d send_heartbeat")
    r = client.send_heartbeat(SERVICE, IP, PORT)
    expect(isinstance(r, dict) and r.get("code") == 10200, f"send_heartbeat({SERVICE!r}, {IP!r}, {PORT})",
           "a JSON object with code 10200", r)
    steps.ok(f"{r}")

    steps.start("d remove_naming_instance")
    r = client.remove_naming_instance(SERVICE, IP, PORT)
    expect(r is True, f"remove_naming_instance({SERVICE!r}, {IP!r}, {PORT})", True, r)
    res = client.list_naming_instance(SERVICE, healthy_only=True)
    found = find_host(res, IP, PORT)
    expect(found == [], f"list_naming_instance({SERVICE!r}) after removal", "no host 127.0.0.1:8080", res)
    steps.ok()


def stop_client(client):
    """Stop what the package started; each step best effort."""
    for key, wl in list(getattr(client, "watcher_mapping", {}).items()):
        data_id, group = key.split("+")[:2]
        for w in list(wl):
            try:
                client.remove_config_watcher(data_id, group, w.callback, remove_all=True)
            except Exception:
                pass
    for task in list(getattr(client, "heartbeats", {}).values()):
        task.stop()
    try:
        client.stop_subscribe()
    except Exception:
        pass
    pool = getattr(client, "callback_tread_pool", None)
    if pool is not None:
        try:
            pool.terminate()
        except Exception:
            pass
    mgr = getattr(client, "process_mgr", None)
    if mgr is not None:
        try:
            mgr.shutdown()
        except Exception:
            pass


def cleanup(client):
    """Best effort after a failure, so a reused server is not left dirty."""
    for f in (lambda: client.remove_config(DATA_ID, GROUP),
              lambda: client.remove_naming_instance(SERVICE, IP, PORT)):
        try:
            f()
        except Exception:
            pass


def show_log(tmp, lines=30):
    """The tail of the package's own log (requests it sent, answers it got)."""
    try:
        with open(os.path.join(tmp, "logs", "nacos-client-python.log"), encoding="utf-8", errors="replace") as f:
            tail = f.readlines()[-lines:]
    except OSError:
        return
    print(f"--- last {len(tail)} lines of the nacos-sdk-python log:", flush=True)
    for line in tail:
        print("    " + line.rstrip("\n")[:400], flush=True)


def main(argv):
    if len(argv) != 2:
        print(f"usage: {argv[0]} HOST:PORT", file=sys.stderr)
        return 2
    addr = argv[1]
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or ":" in host:
        print(f"usage: {argv[0]} HOST:PORT (IPv4 address or host name; got {addr!r})", file=sys.stderr)
        return 2

    tmp = tempfile.mkdtemp(prefix="nacos_compat.")
    rc = 1
    client = None
    try:
        print(f"nacos-sdk-python {PKG_VERSION} against {addr}", flush=True)
        if hasattr(nacos_client_module, "Manager"):
            nacos_client_module.Manager = _detached_manager
        # The package logs to a file (here in tmp, DEBUG: every request); shown on failure.
        client = nacos.NacosClient(addr, namespace="", logDir=os.path.join(tmp, "logs"), log_level=logging.DEBUG)
        # Its helper modules log to the "nacos" logger, which has no handler (so warnings
        # would go to stderr); keep them quiet.
        logging.getLogger("nacos").addHandler(logging.NullHandler())
        # Keep the package's snapshot/failover files out of the working directory.
        client.set_options(snapshot_base=os.path.join(tmp, "snapshot"),
                           failover_base=os.path.join(tmp, "failover"))
        spy = PollSpy(client)
        steps = Steps()
        try:
            run(addr, client, spy, steps)
            print("nacos_compat: all steps passed", flush=True)
            rc = 0
        except Failure as e:
            print(f"FAIL {steps.current}: {e}", flush=True)
            show_log(tmp)
            cleanup(client)
        except Exception as e:  # NacosException, NacosRequestException, malformed answers, ...
            print(f"FAIL {steps.current}: unexpected {type(e).__name__}: {e}", flush=True)
            show_log(tmp)
            cleanup(client)
    finally:
        if client is not None:
            stop_client(client)
        shutil.rmtree(tmp, ignore_errors=True)
        sys.stdout.flush()
        sys.stderr.flush()
    return rc


if __name__ == "__main__":
    # os._exit: the package's daemon puller may still be inside a held long-poll.
    os._exit(main(sys.argv))
