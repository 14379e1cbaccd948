#!/usr/bin/env python3
"""One side of a Consul lock hand-over, with the unmodified py-consul client.

Usage:
  python3 consul_lock.py hold HOST:PORT KEY TTL_SECONDS LOCK_DELAY_SECONDS
  python3 consul_lock.py wait HOST:PORT KEY TTL_SECONDS LOCK_DELAY_SECONDS

Both sides follow Consul's leader-election recipe (the "Application leader elections"
tutorial and the KV and session API docs):
  1. create a session with a TTL (session API: "If provided, the session is invalidated if
     it is not renewed before the TTL expires.") and renew it periodically;
  2. try PUT /v1/kv/KEY?acquire=SESSION;
  3. if that fails, watch the key with a blocking query and try again when its Session is
     cleared. Sessions overview: "When a session invalidation takes place, Consul prevents
     any of the previously held locks from being re-acquired for the lock-delay interval",
     so an acquire can still fail while the key shows no holder; the waiter then tries
     again shortly.

"hold" acquires the lock, prints "acquired SESSION LOCK_INDEX", and renews its session
every TTL/2 until it is killed. "wait" prints "waiting SESSION" once the lock is seen held
by someone else, then prints "acquired EPOCH_SECONDS SESSION LOCK_INDEX" when it gets it, and
exits 0. Any failure prints "FAIL ..." and exits 1.
"""

from __future__ import annotations

import sys
import threading
import time

import consul
from consul_compat import parse_addr  # shared with the agent-API test


def renew_forever(c, session, ttl):
    # Consul's api clients renew at half the TTL (RenewPeriodic).
    while True:
        time.sleep(ttl / 2)
        c.session.renew(session)


def hold(c, key, ttl, lock_delay):
    session = c.session.create(name="holder", ttl=ttl, lock_delay=lock_delay)
    if not c.kv.put(key, "holder", acquire=session):
        print(f"FAIL the holder could not acquire {key}", flush=True)
        return 1
    _, entry = c.kv.get(key)
    print(f"acquired {session} {entry['LockIndex']}", flush=True)
    renew_forever(c, session, ttl)
    return 0


def wait(c, key, ttl, lock_delay):
    session = c.session.create(name="waiter", ttl=ttl, lock_delay=lock_delay)
    threading.Thread(target=renew_forever, args=(c, session, ttl), daemon=True).start()
    index, entry = c.kv.get(key)
    if entry is None or entry.get("Session") in (None, session):
        print(f"FAIL expected {key} held by another session, found {entry!r}", flush=True)
        return 1
    print(f"waiting {session}", flush=True)
    while True:
        if entry is None or "Session" not in entry:
            if c.kv.put(key, "waiter", acquire=session):
                acquired_at = time.time()
                _, mine = c.kv.get(key)
                if mine.get("Session") != session:
                    print(f"FAIL acquired, but the key shows {mine!r}", flush=True)
                    return 1
                print(f"acquired {acquired_at:.3f} {session} {mine['LockIndex']}", flush=True)
                return 0
            # Refused with no holder: the lock delay runs. Try again shortly.
            time.sleep(0.1)
            index, entry = c.kv.get(key)
            continue
        # Held: block until the key changes (bounded, so a lost wake-up costs little).
        index, entry = c.kv.get(key, index=index, wait="5s")


def main(argv):
    if len(argv) != 6 or argv[1] not in ("hold", "wait"):
        print(__doc__, file=sys.stderr)
        return 2
    host, port = parse_addr(argv[2])
    key, ttl, lock_delay = argv[3], int(argv[4]), int(argv[5])
    c = consul.Consul(host=host, port=port)
    try:
        if argv[1] == "hold":
            return hold(c, key, ttl, lock_delay)
        return wait(c, key, ttl, lock_delay)
    except Exception as e:  # consul.ConsulException, requests errors
        print(f"FAIL unexpected {type(e).__name__}: {e}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
