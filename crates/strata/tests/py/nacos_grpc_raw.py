#!/usr/bin/env python3
"""Speaks the Nacos 2.x gRPC protocol by hand (the generated stubs of nacos-sdk-python 2.x,
no client logic), for what the client cannot be made to do: server pushes it ignores
(nacos-sdk-python 2.0.11 does not know ConnectResetRequest), a client that does not answer
ClientDetectionRequest, and an InstanceRequest with ephemeral=false (the client sends a
PersistentInstanceRequest for those).

Usage: nacos_grpc_raw.py MODE ARGS..
  reset GRPC MARKER NODES   connects to GRPC, writes MARKER and waits (up to 60 s) for a
                            ConnectResetRequest; NODES is a JSON list of {"grpc", "http"}
                            of every node. Answers it, connects to the node it names (which
                            must be another node, named by its Nacos HTTP port as Nacos
                            clients expect), checks that node answers, then closes the first
                            connection; prints the request as JSON
  detect GRPC               two idle connections, one that answers ClientDetectionRequest and
                            one that does not: the silent one is closed by the server, the
                            other one stays
  ephemeral-false GRPC HTTP InstanceRequest with instance.ephemeral=false registers an
                            ephemeral instance that goes with the connection, as Nacos 2.x
                            does; mixing kinds in a service is refused
"""

import json
import queue
import sys
import threading
import time
import urllib.request

import grpc
from google.protobuf.any_pb2 import Any
from v2.nacos.transport.grpcauto.nacos_grpc_service_pb2 import Metadata, Payload
from v2.nacos.transport.grpcauto.nacos_grpc_service_pb2_grpc import (BiRequestStreamStub,
                                                                     RequestStub)

# What a client answers to each server push.
ANSWERS = {
    "ConnectResetRequest": "ConnectResetResponse",
    "ClientDetectionRequest": "ClientDetectionResponse",
}


def payload(kind, body):
    return Payload(metadata=Metadata(type=kind), body=Any(value=json.dumps(body).encode()))


class Raw:
    """One client connection: the unary stub and the bi-stream on one channel."""

    def __init__(self, addr, answer=True):
        self.addr = addr
        self.answer = answer
        # A channel of its own (no shared subchannel): the server knows a connection by the
        # client's address, as Nacos clients keep one TCP connection per client.
        self.channel = grpc.insecure_channel(addr,
                                             options=[("grpc.use_local_subchannel_pool", 1)])
        self.stub = RequestStub(self.channel)
        kind, check = self.ask("ServerCheckRequest", {})
        assert kind == "ServerCheckResponse" and check["resultCode"] == 200, (kind, check)
        self.outbox = queue.Queue()
        self.pushes = queue.Queue()
        self.ended = threading.Event()
        self.call = BiRequestStreamStub(self.channel).requestBiStream(self._outgoing())
        threading.Thread(target=self._read, daemon=True).start()
        self.send("ConnectionSetupRequest",
                  {"clientVersion": "strata-test", "tenant": "", "labels": {}})
        # The server waits for the setup before it answers requests of this connection.
        kind, health = self.ask("HealthCheckRequest", {})
        assert health["resultCode"] == 200, (kind, health)

    def _outgoing(self):
        while True:
            item = self.outbox.get()
            if item is None:
                return
            yield item

    def _read(self):
        try:
            for pushed in self.call:
                body = json.loads(pushed.body.value)
                kind = pushed.metadata.type
                self.pushes.put((kind, body))
                if self.answer and kind in ANSWERS:
                    self.send(ANSWERS[kind], {"requestId": body.get("requestId", ""),
                                              "resultCode": 200, "errorCode": 0})
        except grpc.RpcError:
            pass
        finally:
            self.ended.set()

    def send(self, kind, body):
        self.outbox.put(payload(kind, body))

    def ask(self, kind, body):
        reply = self.stub.request(payload(kind, body), timeout=5)
        return reply.metadata.type, json.loads(reply.body.value)

    def wait_push(self, kind, seconds):
        end = time.monotonic() + seconds
        seen = []
        while time.monotonic() < end:
            try:
                got, body = self.pushes.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                break
            if got == kind:
                return body
            seen.append(got)
        raise AssertionError(f"no {kind} within {seconds} s; saw {seen}")

    def close(self):
        self.outbox.put(None)
        self.channel.close()


def reset(grpc_addr, marker, nodes):
    first = Raw(grpc_addr)
    with open(marker, "w") as f:
        f.write("connected\n")
    asked = first.wait_push("ConnectResetRequest", 60)
    assert asked.get("module") == "internal", asked
    ip, port = asked.get("serverIp", ""), asked.get("serverPort", "")
    assert ip, f"no server named: {asked}"
    # serverPort is a server (HTTP) port: clients dial gRPC at the matching gRPC port.
    target = [n["grpc"] for n in nodes
              if n.get("http") and n["http"] == f"{ip}:{port}"]
    assert len(target) == 1, (asked, nodes)
    assert target[0] != grpc_addr, f"sent back to the stopping node: {asked}"
    second = Raw(target[0])
    kind, health = second.ask("HealthCheckRequest", {})
    assert health["resultCode"] == 200, (kind, health)
    first.close()
    print(json.dumps({"serverIp": ip, "serverPort": port, "moved_to": target[0]}))
    second.close()


def detect(grpc_addr):
    answering = Raw(grpc_addr, answer=True)
    silent = Raw(grpc_addr, answer=False)
    # The server pings a connection silent for 20 s, and closes it 5 s later unless it
    # answered.
    assert silent.ended.wait(60), "the silent connection was not closed"
    ping = silent.pushes.get_nowait()
    assert ping[0] == "ClientDetectionRequest", ping
    print("the silent connection was closed")
    kind, health = silent.ask("HealthCheckRequest", {})
    assert health["errorCode"] == 301, (kind, health)
    answering.wait_push("ClientDetectionRequest", 30)
    assert not answering.ended.is_set()
    kind, health = answering.ask("HealthCheckRequest", {})
    assert health["resultCode"] == 200, (kind, health)
    print("the answering connection stays")
    answering.close()
    silent.close()
    print("all steps passed")


def http_hosts(http_addr, service):
    url = f"http://{http_addr}/nacos/v1/ns/instance/list?serviceName={service}"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return sorted((h["ip"], h["port"], h["ephemeral"]) for h in json.load(reply)["hosts"])


def until(what, check, seconds=10):
    end = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def instance_request(kind, service, ip, ephemeral, request="InstanceRequest"):
    return (request, {
        "namespace": "", "serviceName": service, "groupName": "DEFAULT_GROUP", "type": kind,
        "instance": {"ip": ip, "port": 9100, "weight": 1.0, "healthy": True, "enabled": True,
                     "ephemeral": ephemeral, "clusterName": "", "metadata": {}},
    })


def ephemeral_false(grpc_addr, http_addr):
    raw = Raw(grpc_addr)
    # Nacos 2.x's InstanceRequestHandler registers every InstanceRequest as ephemeral
    # (Service.newService(namespace, group, name, true), EphemeralClientOperationServiceImpl),
    # whatever the instance's own ephemeral field says.
    kind, got = raw.ask(*instance_request("registerInstance", "grpc-eph-false", "10.5.0.1",
                                          False))
    assert kind == "InstanceResponse" and got["resultCode"] == 200, (kind, got)
    assert http_hosts(http_addr, "grpc-eph-false") == [("10.5.0.1", 9100, True)]
    print("registered as ephemeral")
    # So the service is an ephemeral one: a persistent instance is refused in it.
    kind, got = raw.ask(*instance_request("registerInstance", "grpc-eph-false", "10.5.0.2",
                                          False, request="PersistentInstanceRequest"))
    assert kind == "InstanceResponse" and got["errorCode"] == 400, (kind, got)
    assert got["message"] == ("Current service DEFAULT_GROUP@@grpc-eph-false is ephemeral "
                              "service, can't register persistent instance."), got
    # And an InstanceRequest into a persistent service is refused.
    kind, got = raw.ask(*instance_request("registerInstance", "grpc-persist-raw", "10.5.0.3",
                                          False, request="PersistentInstanceRequest"))
    assert got["resultCode"] == 200, (kind, got)
    kind, got = raw.ask(*instance_request("registerInstance", "grpc-persist-raw", "10.5.0.4",
                                          False))
    assert kind == "InstanceResponse" and got["errorCode"] == 400, (kind, got)
    assert "is persistent service, can't register ephemeral instance." in got["message"], got
    print("mixing kinds refused")
    # Odd input on a set-up connection gets answers, never a dropped call.
    kind, got = raw.ask("PersistentInstanceRequest",
                        {"serviceName": "grpc-persist-raw", "type": "registerInstance"})
    assert kind == "InstanceResponse" and got["errorCode"] == 400, (kind, got)
    kind, got = raw.ask("PersistentInstanceRequest",
                        {"serviceName": "grpc-persist-raw", "type": "nonsense",
                         "instance": {"ip": "10.5.0.9", "port": 1}})
    assert kind == "InstanceResponse" and got["errorCode"] == 400, (kind, got)
    for body, want in [
        ({"pageNo": 1, "pageSize": -1}, (2, [])),
        ({"pageNo": 9223372036854775807, "pageSize": 9223372036854775807}, (2, [])),
        ({"pageNo": "x", "pageSize": None}, (2, ["grpc-eph-false", "grpc-persist-raw"])),
        ({"pageNo": -3, "pageSize": 1}, (2, ["grpc-eph-false"])),
        ({"pageNo": 2, "pageSize": 1, "selector": "{\"type\":\"label\"}"},
         (2, ["grpc-persist-raw"])),
    ]:
        kind, got = raw.ask("ServiceListRequest", dict(body, namespace="", groupName=""))
        assert kind == "ServiceListResponse" and got["resultCode"] == 200, (body, kind, got)
        assert (got["count"], got["serviceNames"]) == want, (body, got)
    print("odd input answered")
    raw.close()
    # The ephemeral instance went with the connection; the persistent one stays.
    until("the ephemeral instance to go",
          lambda: http_hosts(http_addr, "grpc-eph-false") == [])
    assert http_hosts(http_addr, "grpc-persist-raw") == [("10.5.0.3", 9100, False)]
    print("all steps passed")


def main():
    mode = sys.argv[1]
    if mode == "reset":
        reset(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
    elif mode == "detect":
        detect(sys.argv[2])
    elif mode == "ephemeral-false":
        ephemeral_false(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
