#!/usr/bin/env python3
"""tls_pipe.py server PORT CERT KEY | client PORT FILE: the anchor of Benchmarks/migrate.sh, the
bytes of FILE through one TLS 1.3 connection on loopback (OpenSSL, through Python's ssl), read
and discarded by the server; the client exits once the server has them all."""
import socket, ssl, sys

CHUNK = 256 << 10
if sys.argv[1] == "server":
    port, cert, key = int(sys.argv[2]), sys.argv[3], sys.argv[4]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    with socket.create_server(("127.0.0.1", port)) as listener:
        connection, _ = listener.accept()
        with context.wrap_socket(connection, server_side=True) as tls:
            total = 0
            while chunk := tls.recv(CHUNK):
                total += len(chunk)
            print(total)
else:
    port, path = int(sys.argv[2]), sys.argv[3]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port)) as connection, context.wrap_socket(connection) as tls, open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            tls.sendall(chunk)
        try:
            tls.unwrap()  # returns (or fails) once the server has read everything and closed
        except (ssl.SSLError, OSError):
            pass
