#!/usr/bin/env python3
"""RSS of `sluice serve` under 64 connections that each announce a 16 MiB frame and send 1 KiB
(issue 17, item 10): the server must grow with the bytes that arrive, not the lengths announced.

usage: scripts/serve-hostile-rss.py BINARY [extra serve flags...]   e.g. target/debug/sluice
"""
import os, socket, struct, subprocess, sys, tempfile, time

binary, extra = sys.argv[1], sys.argv[2:]
PREFACE = b"SLUICE\x00\x01"

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def rss_kib(pid, field="VmRSS"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

def hello():
    client = b"rss probe"
    # postcard: id 0, Body::Hello (variant 0), namespace None, token None, client string
    body = bytes([0, 0, 0, 0, len(client)]) + client
    return struct.pack("<I", len(body)) + body

def read_frame(sock):
    head = b""
    while len(head) < 4:
        head += sock.recv(4 - len(head))
    (n,) = struct.unpack("<I", head)
    body = b""
    while len(body) < n:
        body += sock.recv(n - len(body))
    return body

port = free_port()
data = tempfile.mkdtemp(prefix="rss-")
proc = subprocess.Popen([binary, "serve", "--data", data, "--listen", f"127.0.0.1:{port}", "--http", "off", *extra],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close(); break
        except OSError:
            if time.time() > deadline: raise
            time.sleep(0.05)
    time.sleep(1)
    before = rss_kib(proc.pid)
    socks = []
    for _ in range(64):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(PREFACE)
        assert s.recv(8) == PREFACE
        s.sendall(hello())
        read_frame(s)  # welcome
        s.sendall(struct.pack("<I", 16 * 1024 * 1024) + b"\0" * 1024)
        socks.append(s)
    time.sleep(2)
    during = rss_kib(proc.pid)
    peak = rss_kib(proc.pid, "VmHWM")
    print(f"{os.path.basename(binary)}: RSS idle {before/1024:.1f} MiB, with 64 hostile connections {during/1024:.1f} MiB (peak {peak/1024:.1f} MiB), +{(during-before)/1024:.1f} MiB")
    if "--slow-frame-timeout" in extra:
        timeout = float(extra[extra.index("--slow-frame-timeout") + 1].rstrip("s"))
        time.sleep(timeout + 2)
        closed = 0
        for s in socks:
            s.settimeout(5)
            try:
                while s.recv(65536):
                    pass
                closed += 1
            except OSError:
                closed += 1
        print(f"  after the slow-frame timeout: {closed}/64 connections closed by the server, RSS {rss_kib(proc.pid)/1024:.1f} MiB")
    for s in socks:
        s.close()
finally:
    proc.terminate(); proc.wait(timeout=30)
