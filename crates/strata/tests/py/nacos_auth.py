#!/usr/bin/env python3
"""Strata's Nacos login through the unmodified nacos-sdk-python client (1.0.0).

Usage: python3 nacos_auth.py HOST:PORT USER PASSWORD

The client logs in with the user's password (POST /nacos/v1/auth/login), reads the config
app.yaml of DEFAULT_GROUP with the token it got, and is refused another group. A wrong
password is refused at construction. Prints one line per step and "all steps passed".
"""
import sys

import nacos


def fail(step, expected, got):
    print(f"FAIL {step}: expected {expected}, got {got!r}")
    sys.exit(1)


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        sys.exit(2)
    server, user, password = sys.argv[1:]
    client = nacos.NacosClient(server, namespace="", username=user, password=password)
    content = client.get_config("app.yaml", "DEFAULT_GROUP")
    if content != "greeting: hello\n":
        fail("get_config", "greeting: hello", content)
    print("ok   logged in and read app.yaml")
    try:
        other = client.get_config("secret.yaml", "OPS_GROUP")
    except Exception as e:  # noqa: BLE001 - the SDK raises NacosException on 403
        if "Insufficient privilege" not in str(e):
            fail("other group", "Insufficient privilege", e)
        print("ok   refused a config outside the grant")
    else:
        fail("other group", "refused", other)
    try:
        nacos.NacosClient(server, namespace="", username=user, password=password + "x")
    except Exception as e:  # noqa: BLE001 - the SDK re-raises the login's HTTP error
        print(f"ok   wrong password refused: {e}")
    else:
        fail("wrong password", "an error", "a client")
    print("all steps passed")


if __name__ == "__main__":
    main()
