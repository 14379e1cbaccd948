#!/usr/bin/env python3
"""Drives nacos-sdk-python 2.x's gRPC client (package `v2.nacos`) against a Strata node's
Nacos 2.x gRPC API, unchanged.

Usage: nacos_grpc.py HTTP_ADDR GRPC_ADDR MODE [ARG]
  config          publish, query, listen (a pushed change), remove, query a missing config
  push-latency N  N changes one after another; prints JSON with the milliseconds from each
                  publish to the listener seeing it (p50, p99, max)
  naming          register, query, subscribe (pushed updates), batch register, deregister
  bad-input       raw payloads a client would never send (not JSON, no type, unknown type,
                  missing fields, requests before connection setup): each gets an error
                  response with resultCode 500, never a dropped call
  hold FILE       registers an ephemeral instance of `grpc-held` on port 7001, writes FILE,
                  and waits to be killed
  persistent      registers a persistent instance (PersistentInstanceRequest) of
                  `grpc-persist` and an ephemeral one of `grpc-eph`; mixing the two kinds in
                  one service is refused with Nacos's words; then closes its connection
  persistent-remove
                  an ephemeral deregistration leaves the persistent instance alone; a
                  persistent one removes it
  service-list    ServiceListRequest: pages of a group's service names, other groups and
                  namespaces

The client dials the gRPC port as the HTTP port + `grpc_config.port_offset` (1000 unless
set), so the offset is set to GRPC_PORT - HTTP_PORT.
"""

import asyncio
import json
import logging
import sys
import tempfile
import time

from v2.nacos import (BatchRegisterInstanceParam, ClientConfigBuilder, ConfigParam,
                      DeregisterInstanceParam, GRPCConfig, ListServiceParam,
                      NacosConfigService, NacosException, NacosNamingService,
                      RegisterInstanceParam, SubscribeServiceParam)

DEADLINE = 10.0


def client_config(http_addr, grpc_addr, folder):
    http_port = int(http_addr.rsplit(":", 1)[1])
    grpc_port = int(grpc_addr.rsplit(":", 1)[1])
    return (ClientConfigBuilder()
            .server_address(http_addr)
            .log_level(logging.WARNING)
            .log_dir(folder)
            .cache_dir(folder)
            .grpc_config(GRPCConfig(grpc_timeout=5000, port_offset=grpc_port - http_port))
            .build())


async def until(queue, wanted, what):
    """Takes values from `queue` until one equals `wanted`, within DEADLINE seconds."""
    end = time.monotonic() + DEADLINE
    seen = []
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{what}: wanted {wanted!r}, saw {seen!r}")
        try:
            value = await asyncio.wait_for(queue.get(), left)
        except asyncio.TimeoutError:
            continue
        seen.append(value)
        if value == wanted:
            return


async def config_steps(cfg):
    service = await NacosConfigService.create_config_service(cfg)
    data_id, group = "grpc-app.yaml", "DEFAULT_GROUP"
    assert await service.publish_config(
        ConfigParam(data_id=data_id, group=group, content="port: 1\n", type="yaml"))
    print("published")
    got = await service.get_config(ConfigParam(data_id=data_id, group=group))
    assert got == "port: 1\n", got
    print("queried")

    changes = asyncio.Queue()

    async def listener(tenant, group_name, changed_id, content):
        await changes.put(content)

    await service.add_listener(data_id, group, listener)
    assert await service.publish_config(
        ConfigParam(data_id=data_id, group=group, content="port: 2\n"))
    await until(changes, "port: 2\n", "pushed change")
    print("change pushed")

    assert await service.remove_config(ConfigParam(data_id=data_id, group=group))
    missing = await service.get_config(ConfigParam(data_id="never-published", group=group))
    assert not missing, missing
    print("removed; a missing config reads empty")
    await service.shutdown()
    print("all steps passed")


async def push_latency(cfg, count):
    service = await NacosConfigService.create_config_service(cfg)
    data_id, group = "grpc-latency", "DEFAULT_GROUP"
    assert await service.publish_config(ConfigParam(data_id=data_id, group=group, content="v0"))
    changes = asyncio.Queue()

    async def listener(tenant, group_name, changed_id, content):
        await changes.put((time.perf_counter(), content))

    await service.add_listener(data_id, group, listener)
    # One change first, so that the listener is known to the server before timing starts.
    assert await service.publish_config(ConfigParam(data_id=data_id, group=group, content="warm"))
    while (await asyncio.wait_for(changes.get(), DEADLINE))[1] != "warm":
        pass
    total, after_publish = [], []
    for n in range(1, count + 1):
        content = f"v{n}"
        started = time.perf_counter()
        assert await service.publish_config(
            ConfigParam(data_id=data_id, group=group, content=content))
        published = time.perf_counter()
        while True:
            seen_at, seen = await asyncio.wait_for(changes.get(), DEADLINE)
            if seen == content:
                break
        total.append((seen_at - started) * 1000.0)
        after_publish.append(max(0.0, (seen_at - published) * 1000.0))
    await service.shutdown()

    def pct(values, p):
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))]

    print(json.dumps({
        "changes": count,
        "p50_ms": pct(total, 0.50), "p99_ms": pct(total, 0.99), "max_ms": max(total),
        "after_publish_p99_ms": pct(after_publish, 0.99),
    }))


async def naming_steps(cfg):
    naming = await NacosNamingService.create_naming_service(cfg)
    name = "grpc-svc"
    assert await naming.register_instance(RegisterInstanceParam(
        service_name=name, ip="10.0.0.1", port=8080, metadata={"zone": "a"}))
    print("registered")
    queried = await naming.grpc_client_proxy.query_instance_of_service(
        name, "DEFAULT_GROUP", "", False)
    hosts = [(h.ip, h.port, h.metadata.get("zone")) for h in queried.hosts]
    assert hosts == [("10.0.0.1", 8080, "a")], hosts
    print("queried")

    updates = asyncio.Queue()

    async def on_change(instances):
        await updates.put(sorted((i.ip, i.port) for i in instances))

    await naming.subscribe(SubscribeServiceParam(service_name=name, subscribe_callback=on_change))
    assert await naming.register_instance(RegisterInstanceParam(
        service_name=name, ip="10.0.0.2", port=8080))
    await until(updates, [("10.0.0.1", 8080), ("10.0.0.2", 8080)], "pushed registration")
    print("registration pushed")

    assert await naming.batch_register_instances(BatchRegisterInstanceParam(
        service_name=name, instances=[
            RegisterInstanceParam(service_name=name, ip="10.0.0.3", port=1),
            RegisterInstanceParam(service_name=name, ip="10.0.0.4", port=1),
        ]))
    await until(updates, [("10.0.0.3", 1), ("10.0.0.4", 1)], "batch register replaces")
    print("batch registered")

    assert await naming.deregister_instance(DeregisterInstanceParam(
        service_name=name, ip="10.0.0.3", port=1))
    await until(updates, [("10.0.0.4", 1)], "pushed deregistration")
    print("deregistration pushed")
    try:
        await naming.shutdown()
    except TypeError:
        # nacos-sdk-python 2.0.11 awaits a plain function in NacosNamingService.shutdown,
        # after it has closed the connection; nothing of ours is left open.
        pass
    print("all steps passed")


def bad_input(grpc_addr):
    import grpc
    from google.protobuf.any_pb2 import Any
    from v2.nacos.transport.grpcauto.nacos_grpc_service_pb2 import Metadata, Payload
    from v2.nacos.transport.grpcauto.nacos_grpc_service_pb2_grpc import RequestStub

    stub = RequestStub(grpc.insecure_channel(grpc_addr))

    def ask(kind, body, **metadata):
        payload = Payload(metadata=Metadata(type=kind, **metadata), body=Any(value=body))
        reply = stub.request(payload, timeout=5)
        return reply.metadata.type, json.loads(reply.body.value)

    cases = [
        ("ConfigQueryRequest", b"not json", "ErrorResponse", 400),
        ("ConfigQueryRequest", b"[1, 2]", "ErrorResponse", 400),
        ("", b"{}", "ErrorResponse", 400),
        ("NoSuchRequest", b"{}", "ErrorResponse", 302),
        ("ConfigQueryRequest", b'{"group": "g"}', "ConfigQueryResponse", 400),
        ("ConfigQueryRequest", b'{"dataId": "../x y", "group": "g"}', "ConfigQueryResponse", 400),
        ("ConfigPublishRequest", b'{"dataId": "a", "group": "g"}', "ConfigPublishResponse", 400),
        ("InstanceRequest", b'{"serviceName": "s", "type": "registerInstance"}',
         "InstanceResponse", 301),
        ("ConfigBatchListenRequest", b'{"listen": true}', "ConfigChangeBatchListenResponse", 301),
        ("ServiceQueryRequest", b'{"serviceName": 7}', "QueryServiceResponse", 400),
        ("PersistentInstanceRequest", b'{"serviceName": "s", "type": "registerInstance"}',
         "InstanceResponse", 301),
        ("ServiceListRequest", b'{"pageNo": "x", "pageSize": -1}', "ServiceListResponse", 301),
    ]
    for kind, body, want_kind, want_code in cases:
        got_kind, got = ask(kind, body)
        assert got_kind == want_kind and got["resultCode"] == 500 \
            and got["errorCode"] == want_code, (kind, body, got_kind, got)
    # No metadata at all.
    reply = stub.request(Payload(), timeout=5)
    assert json.loads(reply.body.value)["resultCode"] == 500
    # The server still answers.
    got_kind, got = ask("ServerCheckRequest", b'{"requestId": "1"}')
    assert got_kind == "ServerCheckResponse" and got["resultCode"] == 200, got
    assert got["connectionId"], got
    print("all steps passed")


async def close_naming(naming):
    try:
        await naming.shutdown()
    except TypeError:
        # nacos-sdk-python 2.0.11 awaits a plain function in NacosNamingService.shutdown,
        # after it has closed the connection; nothing of ours is left open.
        pass


async def refused(call, words):
    """Runs `call`, which must fail with a NacosException whose message has `words`."""
    try:
        await call
    except NacosException as e:
        assert words in e.message, e.message
        return
    raise AssertionError(f"not refused: wanted {words!r}")


async def hosts_of(naming, name):
    queried = await naming.grpc_client_proxy.query_instance_of_service(
        name, "DEFAULT_GROUP", "", False)
    return sorted((h.ip, h.port, h.ephemeral) for h in queried.hosts)


async def persistent_steps(cfg):
    naming = await NacosNamingService.create_naming_service(cfg)
    # ephemeral=False makes the client send PersistentInstanceRequest.
    assert await naming.register_instance(RegisterInstanceParam(
        service_name="grpc-persist", ip="10.2.0.1", port=9000, ephemeral=False))
    assert await naming.register_instance(RegisterInstanceParam(
        service_name="grpc-eph", ip="10.2.0.2", port=9000))
    print("registered a persistent and an ephemeral instance")
    assert await hosts_of(naming, "grpc-persist") == [("10.2.0.1", 9000, False)]
    assert await hosts_of(naming, "grpc-eph") == [("10.2.0.2", 9000, True)]
    # Nacos keeps a service either ephemeral or persistent (its ClientOperationService
    # implementations refuse the other kind with these words).
    await refused(naming.register_instance(RegisterInstanceParam(
        service_name="grpc-eph", ip="10.2.0.3", port=9000, ephemeral=False)),
        "Current service DEFAULT_GROUP@@grpc-eph is ephemeral service, "
        "can't register persistent instance.")
    await refused(naming.register_instance(RegisterInstanceParam(
        service_name="grpc-persist", ip="10.2.0.4", port=9000)),
        "Current service DEFAULT_GROUP@@grpc-persist is persistent service, "
        "can't register ephemeral instance.")
    assert await hosts_of(naming, "grpc-persist") == [("10.2.0.1", 9000, False)]
    assert await hosts_of(naming, "grpc-eph") == [("10.2.0.2", 9000, True)]
    print("mixing kinds refused")
    await close_naming(naming)
    print("all steps passed")


async def persistent_remove_steps(cfg):
    naming = await NacosNamingService.create_naming_service(cfg)
    assert await hosts_of(naming, "grpc-persist") == [("10.2.0.1", 9000, False)]
    # An InstanceRequest (what ephemeral=True sends) never touches a persistent instance.
    assert await naming.deregister_instance(DeregisterInstanceParam(
        service_name="grpc-persist", ip="10.2.0.1", port=9000))
    assert await hosts_of(naming, "grpc-persist") == [("10.2.0.1", 9000, False)]
    print("an ephemeral deregistration left it alone")
    assert await naming.deregister_instance(DeregisterInstanceParam(
        service_name="grpc-persist", ip="10.2.0.1", port=9000, ephemeral=False))
    assert await hosts_of(naming, "grpc-persist") == []
    print("a persistent deregistration removed it")
    await close_naming(naming)
    print("all steps passed")


async def service_list_steps(cfg):
    naming = await NacosNamingService.create_naming_service(cfg)
    for name in ("svc-list-c", "svc-list-a", "svc-list-b"):
        assert await naming.register_instance(RegisterInstanceParam(
            service_name=name, ip="10.4.0.1", port=80))
    assert await naming.register_instance(RegisterInstanceParam(
        service_name="svc-list-d", group_name="G2", ip="10.4.0.1", port=80))
    assert await naming.register_instance(RegisterInstanceParam(
        service_name="svc-list-p", ip="10.4.0.1", port=80, ephemeral=False))

    async def page(no, size, **extra):
        listed = await naming.list_services(ListServiceParam(page_no=no, page_size=size, **extra))
        return listed.count, listed.services

    assert await page(1, 2) == (4, ["svc-list-a", "svc-list-b"]), await page(1, 2)
    assert await page(2, 2) == (4, ["svc-list-c", "svc-list-p"]), await page(2, 2)
    assert await page(3, 2) == (4, []), await page(3, 2)
    assert await page(1, 10) == (4, ["svc-list-a", "svc-list-b", "svc-list-c",
                                     "svc-list-p"]), await page(1, 10)
    print("pages of DEFAULT_GROUP")
    assert await page(1, 10, group_name="G2") == (1, ["svc-list-d"]), \
        await page(1, 10, group_name="G2")
    assert await page(1, 10, group_name="nothing-here") == (0, [])
    assert await page(1, 10, namespace_id="other-ns") == (0, [])
    print("other groups and namespaces")
    assert await naming.deregister_instance(DeregisterInstanceParam(
        service_name="svc-list-a", ip="10.4.0.1", port=80))
    assert await page(1, 10) == (3, ["svc-list-b", "svc-list-c", "svc-list-p"]), \
        await page(1, 10)
    print("a service without instances is not listed")
    await close_naming(naming)
    print("all steps passed")


async def hold(cfg, marker):
    naming = await NacosNamingService.create_naming_service(cfg)
    assert await naming.register_instance(RegisterInstanceParam(
        service_name="grpc-held", ip="10.1.1.1", port=7001))
    with open(marker, "w") as f:
        f.write("registered\n")
    await asyncio.Event().wait()


def main():
    http_addr, grpc_addr, mode = sys.argv[1:4]
    arg = sys.argv[4] if len(sys.argv) > 4 else None
    with tempfile.TemporaryDirectory() as folder:
        cfg = client_config(http_addr, grpc_addr, folder)
        if mode == "config":
            asyncio.run(config_steps(cfg))
        elif mode == "push-latency":
            asyncio.run(push_latency(cfg, int(arg)))
        elif mode == "naming":
            asyncio.run(naming_steps(cfg))
        elif mode == "bad-input":
            bad_input(grpc_addr)
        elif mode == "hold":
            asyncio.run(hold(cfg, arg))
        elif mode == "persistent":
            asyncio.run(persistent_steps(cfg))
        elif mode == "persistent-remove":
            asyncio.run(persistent_remove_steps(cfg))
        elif mode == "service-list":
            asyncio.run(service_list_steps(cfg))
        else:
            sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
