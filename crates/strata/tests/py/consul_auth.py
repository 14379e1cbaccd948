#!/usr/bin/env python3
"""Strata's Consul-compatible ACLs through the unmodified py-consul client (1.8.0).

Usage: python3 consul_auth.py HOST:PORT ROOT_TOKEN

Root makes a policy that may write the service "web" only and a token with it; the token
registers web and is refused db; no token is refused; the token sees only web in the catalog;
once deleted, the token is refused. Prints one line per step and "all steps passed"; exits 1
on the first failed expectation.
"""
import os
import sys

import consul

# py-consul prefers CONSUL_HTTP_TOKEN over the token it is given.
os.environ.pop("CONSUL_HTTP_TOKEN", None)


def fail(step, expected, got):
    print(f"FAIL {step}: expected {expected}, got {got!r}")
    sys.exit(1)


def refused(step, call):
    try:
        call()
    except consul.ACLPermissionDenied as e:
        print(f"ok   {step}: 403 {e}")
        return
    except Exception as e:  # noqa: BLE001 - any other outcome is the failure to report
        fail(step, "ACLPermissionDenied", e)
    fail(step, "ACLPermissionDenied", "success")


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    host, port = sys.argv[1].rsplit(":", 1)
    root_token = sys.argv[2]
    root = consul.Consul(host=host, port=int(port), token=root_token)

    me = root.acl.token.read_self()
    if me.get("SecretID") != root_token:
        fail("root token self", "its own secret", me)
    print("ok   root token reads itself")

    policy = root.acl.policy.create("web-only", rules={"service": {"web": {"policy": "write"}}})
    if policy.get("Name") != "web-only" or 'service "web"' not in policy.get("Rules", ""):
        fail("policy create", "web-only with a service rule", policy)
    print("ok   policy web-only created")

    made = root.acl.token.create(policies_name=["web-only"], description="web deployer")
    secret = made.get("SecretID")
    accessor = made.get("AccessorID")
    if not secret or made["Policies"][0]["Name"] != "web-only":
        fail("token create", "a token with the policy", made)
    print("ok   token created")

    limited = consul.Consul(host=host, port=int(port), token=secret)
    me = limited.acl.token.read_self()
    if me.get("AccessorID") != accessor or me.get("Description") != "web deployer":
        fail("limited self", accessor, me)
    print("ok   limited token reads itself")

    if not limited.agent.service.register("web", service_id="web-1", address="127.0.0.1", port=8080):
        fail("register web", True, False)
    print("ok   limited token registers web")
    refused("limited token registers db",
            lambda: limited.agent.service.register("db", service_id="db-1", address="127.0.0.1", port=5432))

    anonymous = consul.Consul(host=host, port=int(port))
    refused("no token registers web",
            lambda: anonymous.agent.service.register("web", service_id="web-2", address="127.0.0.1", port=8081))

    root.agent.service.register("db", service_id="db-9", address="127.0.0.1", port=5433)
    _, services = limited.catalog.services()
    if sorted(services) != ["web"]:
        fail("limited catalog", ["web"], services)
    _, services = root.catalog.services()
    if "db" not in services or "web" not in services:
        fail("root catalog", "db and web", services)
    print("ok   the catalog shows the limited token only what it may read")
    refused("limited token reads db", lambda: limited.health.service("db"))

    if not root.acl.token.delete(accessor):
        fail("token delete", True, False)
    print("ok   token deleted")
    refused("deleted token registers web",
            lambda: limited.agent.service.register("web", service_id="web-3", address="127.0.0.1", port=8082))
    print("all steps passed")


if __name__ == "__main__":
    main()
