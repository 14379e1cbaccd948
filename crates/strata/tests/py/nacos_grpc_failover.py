#!/usr/bin/env python3
"""A nacos-sdk-python 2.x client (package `v2.nacos`, unchanged) of a 3-node cluster whose
config and naming connections are on the same node, for the test that stops that node.

Usage: nacos_grpc_failover.py SERVERS EVENTS
  SERVERS  comma-separated 127.0.0.1:PORT, one per node, PORT being the node's Nacos gRPC
           port - 1000 (the client dials gRPC at its server port + 1000)
  EVENTS   a file this appends JSON lines to:
           {"event": "ready", "grpc": PORT}        both connections are on gRPC port PORT
           {"event": "config", "content": TEXT}    the listener of `grpc-failover` saw TEXT
           {"event": "moved", "client": "config"|"naming", "grpc": PORT}
                                                   a client is now connected to PORT

It listens to config `grpc-failover` and registers an ephemeral instance of service
`grpc-failover` (10.3.0.1:7000), then runs until killed.
"""

import asyncio
import json
import logging
import sys
import tempfile

from v2.nacos import (ClientConfigBuilder, GRPCConfig, NacosConfigService, NacosNamingService,
                      RegisterInstanceParam)

DATA_ID, GROUP, SERVICE = "grpc-failover", "DEFAULT_GROUP", "grpc-failover"


def log(events, **fields):
    with open(events, "a") as f:
        f.write(json.dumps(fields) + "\n")


def port_of(rpc_client):
    connection = rpc_client.current_connection
    return connection.server_info.server_port if connection else None


async def close_naming(naming):
    try:
        await naming.shutdown()
    except TypeError:
        # nacos-sdk-python 2.0.11 awaits a plain function in NacosNamingService.shutdown,
        # after it has closed the connection.
        pass


async def run(servers, events, folder):
    cfg = (ClientConfigBuilder()
           .server_address(servers)
           .log_level(logging.WARNING)
           .log_dir(folder)
           .cache_dir(folder)
           .grpc_config(GRPCConfig(grpc_timeout=5000, port_offset=1000))
           .build())
    config = await NacosConfigService.create_config_service(cfg)
    config_rpc = await config.grpc_client_proxy.fetch_rpc_client(0)
    node = port_of(config_rpc)
    # Each client picks its first server at random: make naming clients until one is on the
    # config client's node, so that stopping that node moves both.
    naming = None
    for _ in range(60):
        candidate = await NacosNamingService.create_naming_service(cfg)
        if port_of(candidate.grpc_client_proxy.rpc_client) == node:
            naming = candidate
            break
        await close_naming(candidate)
    assert naming is not None, "no naming client landed on the config client's node"
    naming_rpc = naming.grpc_client_proxy.rpc_client

    async def listener(tenant, group, data_id, content):
        log(events, event="config", content=content)

    await config.add_listener(DATA_ID, GROUP, listener)
    assert await naming.register_instance(RegisterInstanceParam(
        service_name=SERVICE, ip="10.3.0.1", port=7000))
    log(events, event="ready", grpc=node)
    seen = {"config": node, "naming": node}
    while True:
        for name, rpc in (("config", config_rpc), ("naming", naming_rpc)):
            port = port_of(rpc)
            if port is not None and port != seen[name]:
                seen[name] = port
                log(events, event="moved", client=name, grpc=port)
        await asyncio.sleep(0.02)


def main():
    servers, events = sys.argv[1:3]
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run(servers, events, folder))


if __name__ == "__main__":
    main()
