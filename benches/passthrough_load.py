#!/usr/bin/env python3
"""TLS node and client for benches/compare-passthrough.sh.

The proxies under test never see plaintext: the client speaks PROXY v1 and
then TLS (SNI = the deployment name) through the proxy to the node, which
holds the certificate.

  node   --listen 127.0.0.1:P --cert C --key K
         Per connection, after the TLS handshake, reads one command line:
         "SEND n" -> sends n bytes, then closes (close_notify + FIN).
  bulk   --target H:P --sni S --bytes N --conns C
         C connections in parallel, each asking for N bytes and reading them
         to the end. Prints one JSON object: bytes, seconds.
  connect --target H:P --sni S --count N --conns C
         N short connections (handshake, "SEND 0", read to EOF), C at a time.
         Prints one JSON object: connections, failures, seconds.
"""

import argparse
import json
import socket
import ssl
import sys
import threading
import time

PROXY_V1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 9400\r\n"
CHUNK = bytes(range(256)) * 4096  # 1 MiB


def node(args):
    host, port = args.listen.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    srv = socket.create_server((host, int(port)), backlog=4096, reuse_port=False)
    print("node listening", flush=True)

    def serve(raw):
        try:
            with ctx.wrap_socket(raw, server_side=True) as tls:
                line = b""
                while not line.endswith(b"\n"):
                    part = tls.recv(64)
                    if not part:
                        return
                    line += part
                cmd, n = line.decode().split()
                left = int(n) if cmd == "SEND" else 0
                view = memoryview(CHUNK)
                while left > 0:
                    step = min(left, len(CHUNK))
                    tls.sendall(view[:step])
                    left -= step
                try:
                    tls.unwrap()
                except (ssl.SSLError, OSError):
                    pass
        except (ssl.SSLError, OSError, ValueError):
            pass

    while True:
        raw, _ = srv.accept()
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(raw,), daemon=True).start()


def client_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def one(ctx, target, sni, ask, buf):
    host, port = target.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=30)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw.sendall(PROXY_V1)
    got = 0
    with ctx.wrap_socket(raw, server_hostname=sni) as tls:
        tls.sendall(b"SEND %d\n" % ask)
        while True:
            try:
                n = tls.recv_into(buf)
            except ssl.SSLEOFError:
                break
            if n == 0:
                break
            got += n
    return got


def bulk(args):
    ctx = client_ctx()
    results = [0] * args.conns
    errors = []

    def run(i):
        try:
            results[i] = one(ctx, args.target, args.sni, args.bytes, bytearray(1 << 20))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    start = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(args.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    total = sum(results)
    if errors or total != args.bytes * args.conns:
        print(f"bulk: got {total} of {args.bytes * args.conns} bytes; {errors[:3]}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"bytes": total, "seconds": took}))


def connect(args):
    ctx = client_ctx()
    lock = threading.Lock()
    state = {"next": 0, "done": 0, "failed": 0}

    def run():
        buf = bytearray(4096)
        while True:
            with lock:
                if state["next"] >= args.count:
                    return
                state["next"] += 1
            try:
                one(ctx, args.target, args.sni, 0, buf)
                ok = True
            except Exception:  # noqa: BLE001 - counted
                ok = False
            with lock:
                state["done" if ok else "failed"] += 1

    start = time.monotonic()
    threads = [threading.Thread(target=run) for _ in range(args.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    print(json.dumps({"connections": state["done"], "failures": state["failed"], "seconds": took}))
    if state["failed"]:
        sys.exit(1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    n = sub.add_parser("node")
    n.add_argument("--listen", required=True)
    n.add_argument("--cert", required=True)
    n.add_argument("--key", required=True)
    for name in ("bulk", "connect"):
        c = sub.add_parser(name)
        c.add_argument("--target", required=True)
        c.add_argument("--sni", required=True)
        c.add_argument("--conns", type=int, default=4)
        c.add_argument("--bytes", type=int, default=1 << 30)
        c.add_argument("--count", type=int, default=2000)
    args = p.parse_args()
    {"node": node, "bulk": bulk, "connect": connect}[args.mode](args)


if __name__ == "__main__":
    main()
