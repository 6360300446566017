#!/usr/bin/env python3
"""An independent Berth client written from Docs/wire.md alone: the standard `ssl` module and
the `protobuf` package (messages generated from Sources/Wire/Protos/berth.proto by protoc).

    berth_client.py --controller HOST:PORT --config-dir DIR [options] COMMAND [ARGS]

Commands: list | status NAME | nodes | hold SECONDS (one connection, `list` every 0.2 s);
against an agent's listener (the tests' own forged controller or a node's certificate):
grant-expect ID,VPS,SOURCE,TARGET (migration_expect) | grant-receive ID (migration_receive of an
empty image: the grant's checks answer first).
Exit codes: 0 ok; 2 usage; 3 the server answered ERROR (prints "error CODE: MESSAGE");
4 TLS or connection failure (prints "tls: REASON").
"""
import argparse
import json
import os
import socket
import ssl
import struct
import sys
import time

sys.path.insert(0, os.environ.get("BERTH_PB2_DIR", os.path.dirname(os.path.abspath(__file__))))
import berth_pb2 as pb  # noqa: E402  (generated at test time)
from google.protobuf import json_format  # noqa: E402

HELLO, REQUEST, RESPONSE, DATA, END, CANCEL, ERROR, CREDIT, PING, PONG, PROGRESS = range(1, 12)
MAX_PAYLOAD = 4 << 20


class ServerError(Exception):
    def __init__(self, reply):
        super().__init__(f"{reply.code}: {reply.message}")
        self.reply = reply


class Connection:
    def __init__(self, host, port, config_dir, server_name=None, no_cert=False,
                 max_tls=None, alpn="berth/1"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(os.path.join(config_dir, "ca.pem"))
        if not no_cert:
            ctx.load_cert_chain(os.path.join(config_dir, "cert.pem"), os.path.join(config_dir, "key.pem"))
        if max_tls is not None:
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = max_tls
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        else:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.set_alpn_protocols([alpn])
        raw = socket.create_connection((host, port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname=server_name or host)
        self.buffer = b""
        self.next_stream = 1
        self._send(HELLO, 0, pb.Hello(min_version=2, max_version=2, software="berth_client.py").SerializeToString())
        ftype, stream, payload = self._read_frame()
        if ftype == ERROR:
            raise ServerError(pb.ErrorReply.FromString(payload))
        if ftype != HELLO or stream != 0:
            raise RuntimeError(f"expected HELLO, got frame type {ftype}")
        self.hello = pb.Hello.FromString(payload)

    def _send(self, ftype, stream, payload=b""):
        # [u32 length = 6 + payload][u8 type][u8 flags][u32 stream][payload], big-endian
        self.sock.sendall(struct.pack(">IBBI", 6 + len(payload), ftype, 0, stream) + payload)

    def _read_exact(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _read_frame(self):
        (length,) = struct.unpack(">I", self._read_exact(4))
        if length < 6 or length - 6 > MAX_PAYLOAD:
            raise RuntimeError(f"bad frame length {length}")
        header = self._read_exact(6)
        ftype, _flags, stream = struct.unpack(">BBI", header)
        return ftype, stream, self._read_exact(length - 6)

    def call(self, request):
        stream = self.next_stream
        self.next_stream += 2
        self._send(REQUEST, stream, request.SerializeToString())
        while True:
            ftype, got, payload = self._read_frame()
            if got == 0 and ftype == ERROR:
                raise ServerError(pb.ErrorReply.FromString(payload))
            if got == 0 and ftype == PING:
                self._send(PONG, 0, payload)
                continue
            if got != stream:
                continue
            if ftype == RESPONSE:
                return pb.Response.FromString(payload)
            if ftype == ERROR:
                raise ServerError(pb.ErrorReply.FromString(payload))
            # PROGRESS, DATA, END: not needed for list/status

    def end_input(self, stream):
        """END on channel 0 (stdin) of `stream`: no input follows."""
        self._send(END, stream, b"\x00")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--controller", required=True)
    parser.add_argument("--config-dir", required=True)
    parser.add_argument("--server-name")
    parser.add_argument("--no-cert", action="store_true")
    parser.add_argument("--alpn", default="berth/1")
    parser.add_argument("--max-tls", choices=["1.1", "1.2"])
    parser.add_argument("command", choices=["list", "status", "nodes", "hold", "grant-expect", "grant-receive"])
    parser.add_argument("arg", nargs="?")
    args = parser.parse_args()
    host, _, port = args.controller.rpartition(":")
    max_tls = {"1.1": ssl.TLSVersion.TLSv1_1, "1.2": ssl.TLSVersion.TLSv1_2}.get(args.max_tls)
    try:
        conn = Connection(host.strip("[]"), int(port), args.config_dir, args.server_name, args.no_cert, max_tls, args.alpn)
        if args.command == "list":
            response = conn.call(pb.Request(list=pb.ListRequest(all=True)))
            print(json.dumps([json_format.MessageToDict(v, preserving_proto_field_name=True) for v in response.list.vpses], indent=2))
        elif args.command == "status":
            response = conn.call(pb.Request(status=pb.NameRequest(name=args.arg)))
            print(json.dumps(json_format.MessageToDict(response.status, preserving_proto_field_name=True), indent=2))
        elif args.command == "nodes":
            response = conn.call(pb.Request(node_list=pb.Empty()))
            for node in response.nodes.nodes:
                print(node.name, node.state, node.address)
        elif args.command == "grant-expect":
            grant_id, vps, source, target = args.arg.split(",")
            grant = pb.MigrationGrant(id=grant_id, vps=vps, source=source, target=target, expires_unix=int(time.time()) + 120)
            conn.call(pb.Request(migration_expect=grant))
            print("expected")
        elif args.command == "grant-receive":
            # The request's stream id is the one call() will use next; its input ends at once.
            stream = conn.next_stream
            request = pb.Request(migration_receive=pb.MigrationReceiveRequest(grant_id=args.arg, config=b"{}", disk_size=65536))
            conn._send(REQUEST, stream, request.SerializeToString())
            conn.next_stream += 2
            conn.end_input(stream)
            while True:
                ftype, got, payload = conn._read_frame()
                if ftype == ERROR and got in (0, stream):
                    raise ServerError(pb.ErrorReply.FromString(payload))
                if ftype == RESPONSE and got == stream:
                    print("received")
                    break
        elif args.command == "hold":
            # One long-lived connection: proves a revocation closes sessions already open.
            deadline = time.monotonic() + float(args.arg or "10")
            calls = 0
            while time.monotonic() < deadline:
                conn.call(pb.Request(list=pb.ListRequest(all=True)))
                calls += 1
                print(f"call {calls} ok", flush=True)
                time.sleep(0.2)
    except ServerError as error:
        print(f"error {error.reply.code}: {error.reply.message}")
        return 3
    except (ssl.SSLError, ssl.CertificateError, ConnectionError, OSError) as error:
        print(f"tls: {error}")
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
