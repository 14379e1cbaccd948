"""A standard gRPC client (grpcio, xDS built in) that dials xds:///SERVICE through Strata's
xDS listener and reports which instances answer.

Usage: python3 xds_client.py XDS_HOST:PORT SERVICE

It reads commands from stdin, one per line:
  expect ID,ID,... [KEY=VALUE]
                     call /orders.v1.Orders/Get (with that request metadata, if given) until
                     every listed instance has answered and the last 30 answers all came
                     from them; print "ok COUNTS", or "timeout SEEN" after 20 seconds.
The messages are encoded by hand (two string fields), so no generated code is needed.
"""

import json
import os
import sys
import tempfile
import time


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def get_request(order_id):
    raw = order_id.encode()
    return b"\x0a" + varint(len(raw)) + raw


def served_by(message):
    """Field 4 (string) of orders.v1.Order."""
    i = 0
    while i < len(message):
        key, shift = 0, 0
        while True:
            byte = message[i]
            i += 1
            key |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        field, wire = key >> 3, key & 7
        if wire == 2:
            length, shift = 0, 0
            while True:
                byte = message[i]
                i += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            value = message[i : i + length]
            i += length
            if field == 4:
                return value.decode()
        elif wire == 0:
            while message[i] >= 0x80:
                i += 1
            i += 1
        else:
            raise ValueError("unexpected wire type %d" % wire)
    return ""


def main():
    xds, service = sys.argv[1], sys.argv[2]
    bootstrap = {
        "xds_servers": [
            {
                "server_uri": xds,
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {"id": "xds-client-test", "locality": {"zone": "test"}},
    }
    path = os.path.join(tempfile.mkdtemp(), "bootstrap.json")
    with open(path, "w") as f:
        json.dump(bootstrap, f)
    os.environ["GRPC_XDS_BOOTSTRAP"] = path
    import grpc  # after the bootstrap is in place

    channel = grpc.insecure_channel("xds:///" + service)
    get = channel.unary_unary("/orders.v1.Orders/Get")
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] != "expect":
            print("unknown command", words[0], flush=True)
            continue
        wanted = set(words[1].split(","))
        metadata = [tuple(words[2].split("=", 1))] if len(words) > 2 else None
        counts, recent = {}, []
        deadline = time.time() + 20
        while True:
            try:
                answer = served_by(get(get_request("x:1"), timeout=2, metadata=metadata))
                counts[answer] = counts.get(answer, 0) + 1
                recent = (recent + [answer])[-30:]
            except grpc.RpcError as error:
                recent = (recent + ["error:" + error.code().name])[-30:]
            done = wanted <= set(counts) and len(recent) == 30 and set(recent) <= wanted
            if done:
                print("ok", json.dumps(counts, sort_keys=True), flush=True)
                break
            if time.time() > deadline:
                print("timeout", json.dumps(counts, sort_keys=True), recent[-5:], flush=True)
                break


if __name__ == "__main__":
    main()
