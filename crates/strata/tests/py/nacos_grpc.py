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
                      DeregisterInstanceParam, GRPCConfig, NacosConfigService,
                      NacosNamingService, RegisterInstanceParam, SubscribeServiceParam)

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
        else:
            sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
