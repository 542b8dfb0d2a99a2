#!/usr/bin/env python3
"""Remote checkpoints end to end, against real servers on 127.0.0.1 that this script starts and stops.

    remote_test.py CASE CLI FIXTURES WORKDIR

CASE is one of:
  http      nginx over plain HTTP: every fixture, a sharded checkpoint by its index and by its
            directory, and a larger one in many ranges hash as they do locally, and so does the same
            checkpoint encrypted, loaded with its key; 404 and a URL with
            credentials fail naming the URL without them
  tls       nginx over TLS, HTTP/1.1 and HTTP/2 listeners, the certificate made here and trusted
            through CURL_CA_BUNDLE (and refused without it)
  hub       hf:// paths against a layout like the Hugging Face Hub's: resolve/ needs the token and
            redirects to another host, which never receives the token
  bad       the bad corpus served remotely is refused as it is locally
  faults    a server of this script's own injecting faults: connections reset mid-body or before
            any byte, 503 then success (one mid-load counted in load --json's retries), a stall, a
            chunked body (no Content-Length), kept-alive connections closed unannounced (sent again,
            not counted as retries), a file replaced mid-load (with and without If-Match support),
            200 without a range, 403, 503 for ever

Exits 77 (skipped) where a server cannot start, saying why. Only the standard library is used.
"""
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from servers import Nginx, Unavailable, free_port

SKIP = 77
CASE, CLI, FIXTURES, WORK = sys.argv[1], sys.argv[2], Path(sys.argv[3]).resolve(), Path(sys.argv[4]).resolve()
failures = []


def check(condition, what):
    print(("ok    " if condition else "FAIL  ") + what, flush=True)
    if not condition:
        failures.append(what)


def skip(why):
    print(f"skipped: {why}")
    sys.exit(SKIP)


def cli(*args, env=None, timeout=120):
    """Runs the command; returns (exit code, stdout, stderr)."""
    full_env = dict(os.environ)
    for name in ("HF_TOKEN", "HF_ENDPOINT", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        full_env.pop(name, None)
    full_env["HF_TOKEN_PATH"] = str(WORK / "no-token-file")
    full_env.update(env or {})
    p = subprocess.run([CLI, *args], capture_output=True, text=True, env=full_env, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def local_hash(path):
    code, out, err = cli("hash", str(path))
    assert code == 0, err
    return out


def same_hash(url, path, what, *options, env=None):
    code, out, err = cli("hash", url, *options, env=env)
    check(code == 0 and out == local_hash(path), f"{what}: hash of {url} equals the local one" + (f" ({err.strip()})" if code else ""))


def fails_with(args, pattern, what, env=None, absent=()):
    code, out, err = cli(*args, env=env)
    ok = code != 0 and re.search(pattern, err) is not None and all(a not in err + out for a in absent)
    check(ok, f"{what}: fails with /{pattern}/" + ("" if ok else f" (exit {code}: {err.strip()[:300]})"))
    return err


def make_sample(directory, size_mib, shards):
    code, _, err = cli("sample", "--shards", str(shards), "--size-mib", str(size_mib), str(directory))
    assert code == 0, err


def write_many_tensors(directory, count):
    """A file of `count` one-element F32 tensors and an index listing them: a header and an index
    each longer than the 512 KiB of a remote header's first read."""
    directory.mkdir(parents=True)
    names = [f"model.layers.{i}.some_rather_long_parameter_name.weight" for i in range(count)]
    header = {n: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, n in enumerate(names)}
    text = json.dumps(header).encode()
    data = b"".join(struct.pack("<f", float(i)) for i in range(count))
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + data)
    index = json.dumps({"metadata": {}, "weight_map": {n: "model.safetensors" for n in names}})
    (directory / "model.safetensors.index.json").write_text(index)
    assert len(text) > 512 << 10 and len(index) > 512 << 10


def serve_root():
    """A directory to serve: the fixtures, a sharded sample and a larger one-file sample."""
    root = WORK / "root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for f in FIXTURES.glob("*.safetensors"):
        shutil.copy(f, root / f.name)
    shutil.copytree(FIXTURES / "sharded", root / "sharded")
    make_sample(root / "sample", 24, 3)
    make_sample(root / "large", 192, 1)
    write_many_tensors(root / "many", 12000)
    (WORK / "key").unlink(missing_ok=True)
    if cli("keygen", str(WORK / "key"))[0] == 0:  # a build that encrypts: the sample, encrypted
        code, _, err = cli("encrypt", "--key-file", str(WORK / "key"), "--chunk-kib", "256", str(root / "sample"), str(root / "encrypted"))
        assert code == 0, err
    (root / "broken").mkdir()  # an index whose shard is missing
    (root / "broken" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors"}}))
    return root


def case_http():
    root = serve_root()
    n = Nginx(WORK, lambda port: f"server {{ listen 127.0.0.1:{port()}; root {root}; }}")
    with n:
        base = f"http://127.0.0.1:{n.ports[0]}"
        for f in sorted(root.glob("*.safetensors")):
            same_hash(f"{base}/{f.name}", f, f.name)
        index = next((root / "sharded").glob("*.index.json"))
        same_hash(f"{base}/sharded/{index.name}", index, "sharded, by its index")
        same_hash(f"{base}/sample/", root / "sample", "a directory: its model.safetensors.index.json")
        same_hash(f"{base}/many/model.safetensors.index.json", root / "many", "a header and an index over 512 KiB")
        same_hash(f"{base}/sample/model.safetensors.index.json", root / "sample", "many ranges of 1 MiB, 3 connections",
                  "--slot-mib", "1", "--staging-mib", "8", "--connections", "3")
        if (root / "encrypted").exists():
            same_hash(f"{base}/encrypted/", root / "sample", "an encrypted checkpoint, decrypted with its key",
                      "--key-file", str(WORK / "key"), "--slot-mib", "1", "--staging-mib", "8")
            fails_with(["hash", f"{base}/encrypted/"], "is encrypted", "an encrypted checkpoint without its key")
        code, out, err = cli("load", "--json", f"{base}/sample/model.safetensors.index.json")
        check(code == 0 and '"backend":"http"' in out.replace(" ", ""), "load --json reports the http backend")
        # A slot for each connection's GET and as many landing, unless --staging-mib says otherwise
        # (the default 128 MiB would hold 128 of these 1 MiB reads, not 2 x 80).
        for options, staging in ((("--connections", "80"), 160), (("--connections", "80", "--staging-mib", "8"), 8)):
            code, out, err = cli("load", "--json", "--device", "cpu", "--slot-mib", "1", *options, f"{base}/large/")
            check(code == 0 and json.loads(out.splitlines()[-1])["staging_bytes"] == staging << 20,
                  f"load {' '.join(options)} of a remote checkpoint stages {staging} MiB" + (f" ({err.strip()})" if code else ""))
        fails_with(["hash", "--backend", "uring", f"{base}/sample/"], "remote file: storage::http reads it",
                   "a local backend asked for a remote checkpoint")
        fails_with(["hash", "--backend", "http", str(root / "metadata.safetensors")], "is not remote",
                   "the http backend asked for a local file")
        fails_with(["hash", f"{base}/missing.safetensors"], rf"^instanttensor: {re.escape(base)}/missing\.safetensors: HTTP 404",
                   "a missing file")
        fails_with(["hash", f"{base}/nothing-here/"], "holds neither model.safetensors.index.json nor model.safetensors",
                   "a directory without a checkpoint")
        fails_with(["hash", f"{base}/broken/"], r"broken/model-00001-of-00001\.safetensors: HTTP 404",
                   "a directory whose index lists a missing shard: the shard is named")
        fails_with(["inspect", f"http://user:s3cr3t@127.0.0.1:{n.ports[0]}/missing.safetensors?token=t0k3n"], "HTTP 404",
                   "a URL with credentials", absent=("s3cr3t", "t0k3n"))
        fails_with(["hash", f"{base}/sample/model-00001-of-00003.safetensors", str(root / "metadata.safetensors")],
                   "all local or all remote", "a remote file, then a local one")
        fails_with(["hash", str(root / "metadata.safetensors"), f"{base}/sample/model-00001-of-00003.safetensors"],
                   "all local or all remote", "a local file, then a remote one")
        closed = free_port()
        fails_with(["inspect", f"http://127.0.0.1:{closed}/m.safetensors"], r"(Could not connect|Connection refused|Failed to connect).*5 tries",
                   "nothing listening: tried 5 times")


def make_certificate(directory):
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    if shutil.which("openssl") is None:
        skip("openssl is not installed")
    p = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                        "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        skip(f"openssl could not make a certificate: {p.stderr}")
    return cert, key


def case_tls():
    root = serve_root()
    cert, key = make_certificate(WORK / "tls")
    tls = f"root {root}; ssl_certificate {cert}; ssl_certificate_key {key};"
    n = Nginx(WORK, lambda port: f"server {{ listen 127.0.0.1:{port()} ssl; {tls} }}\n"
                                f"  server {{ listen 127.0.0.1:{port()} ssl http2; {tls} }}")
    trust = {"CURL_CA_BUNDLE": str(cert)}
    with n:
        h1, h2 = n.ports
        for port, what in ((h1, "TLS, HTTP/1.1"), (h2, "TLS, HTTP/2")):
            same_hash(f"https://127.0.0.1:{port}/sample/", root / "sample", what, "--slot-mib", "1", "--staging-mib", "16", env=trust)
        same_hash(f"https://127.0.0.1:{h2}/sharded/", FIXTURES / "sharded", "TLS, SSL_CERT_FILE", env={"SSL_CERT_FILE": str(cert)})
        log = n.log()
        check(re.search(rf"^{h2} HTTP/2.0 206 ", log, re.M) is not None, "the http2 listener served ranges over HTTP/2")
        check(re.search(rf"^{h1} HTTP/1.1 206 ", log, re.M) is not None, "the other served them over HTTP/1.1")
        # Ranges over HTTP/1.1 come on connections of storage::http's own (its User-Agent), over HTTP/2 as libcurl's transfers.
        check(re.search(rf"^{h1} HTTP/1.1 206 .*\"instanttensor\"$", log, re.M) is not None and
              re.search(rf"^{h2} HTTP/2.0 206 .*\"instanttensor\"$", log, re.M) is None,
              "HTTP/1.1 bodies are received by storage::http itself, HTTP/2 ones by libcurl")
        fails_with(["inspect", f"https://127.0.0.1:{h1}/sample/"], "certificate", "a certificate not trusted")


def case_hub():
    root = serve_root()
    hub_root = WORK / "hub"
    shutil.rmtree(hub_root, ignore_errors=True)
    (hub_root / "org").mkdir(parents=True)
    shutil.copytree(root / "sample", hub_root / "org" / "model")
    shutil.copytree(root / "sharded", hub_root / "org" / "sharded")
    token = "hf_test_token_9f8e7d"

    def servers(port):
        hub, cdn = port(), port()
        # resolve/ as the Hub lays it out: the token is required, the bytes come from another host.
        return (f"server {{ listen 127.0.0.1:{hub}; location ~ ^/([^/]+)/([^/]+)/resolve/main/(.*)$ {{\n"
                f"    if ($http_authorization != \"Bearer {token}\") {{ return 401; }}\n"
                f"    return 302 http://127.0.0.1:{cdn}/$1/$2/$3; }} }}\n"
                f"  server {{ listen 127.0.0.1:{cdn}; root {hub_root}; }}")

    n = Nginx(WORK, servers)
    with n:
        hub, cdn = n.ports
        env = {"HF_ENDPOINT": f"http://127.0.0.1:{hub}", "HF_TOKEN": token}
        same_hash("hf://org/model", root / "sample", "hf://org/model (its index)", env=env)
        same_hash("hf://org/sharded@main/" + next((root / "sharded").glob("*.index.json")).name, root / "sharded",
                  "hf:// path to an index at a revision", env=env)
        token_file = WORK / "token"
        token_file.write_text(token + "\n")
        same_hash("hf://org/model", root / "sample", "the token from HF_TOKEN_PATH",
                  env={"HF_ENDPOINT": env["HF_ENDPOINT"], "HF_TOKEN_PATH": str(token_file)})
        log = n.log()
        check(re.search(rf"^{hub} HTTP/1.1 302 \"Bearer {token}\"", log, re.M) is not None, "the Hub received the token")
        check(re.search(rf"^{cdn} .*Bearer", log, re.M) is None and re.search(rf"^{cdn} HTTP/1.1 206 \"-\"", log, re.M) is not None,
              "the host redirected to never received it")
        fails_with(["inspect", "hf://org/model"], r"hf://org/model@main/model\.safetensors\.index\.json: HTTP 401.*set HF_TOKEN",
                   "no token", env={"HF_ENDPOINT": env["HF_ENDPOINT"]})
        fails_with(["inspect", "hf://org/model"], "HTTP 401.*check the token", "a wrong token",
                   env={"HF_ENDPOINT": env["HF_ENDPOINT"], "HF_TOKEN": "hf_wrong_token_123"}, absent=("hf_wrong_token_123",))


def case_bad():
    bad = FIXTURES / "bad"
    n = Nginx(WORK, lambda port: f"server {{ listen 127.0.0.1:{port()}; root {bad}; }}")
    with n:
        base = f"http://127.0.0.1:{n.ports[0]}"
        files = sorted(bad.glob("*.safetensors"))
        same = 0
        for f in files:
            local = cli("inspect", str(f))
            remote = cli("inspect", f"{base}/{f.name}")
            expected = local[2].replace(str(f), f"{base}/{f.name}")
            if local[0] == remote[0] and remote[2] == expected and local[0] != 0:
                same += 1
            else:
                check(False, f"{f.name}: local exit {local[0]} '{local[2].strip()}', remote exit {remote[0]} '{remote[2].strip()}'")
        check(same == len(files), f"{same} of {len(files)} bad files refused remotely with the local message")


class FaultServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """Serves one directory with ranges and ETags, and the faults `mode` asks for."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root, mode):
        self.root, self.mode, self.lock = root, mode, threading.Lock()
        self.requests = 0          # GETs answered
        self.faulted = set()       # (path, range) already faulted once
        self.version = 1           # the content's version: "replaced" bumps it
        self.stalled = False
        self.failed_mid_load = False  # "503-mid-load" answered its 503
        super().__init__(("127.0.0.1", 0), FaultHandler)

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # the client gave up a reset or stalled answer
            super().handle_error(request, client_address)

    def stall_once(self):
        """True the first time only."""
        with self.lock:
            first, self.stalled = not self.stalled, True
            return first


class FaultHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        with server.lock:
            server.requests += 1
            n = server.requests
            key = (self.path, self.headers.get("Range"))
            first_time = key not in server.faulted
            server.faulted.add(key)
            if server.mode in ("replaced", "replaced-ignoring-if-match") and n == 3:
                server.version = 2  # after the header's reads: the rest comes from another version
            version = server.version
        path = server.root / self.path.lstrip("/")
        if not path.is_file():
            return self.answer(404)
        data = path.read_bytes()
        if version == 2:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        etag = f'"v{version}-{hashlib.md5(data).hexdigest()[:12]}"'
        mode = server.mode
        if mode == "forbidden":
            return self.answer(403)
        if mode == "unavailable" or (mode == "503-then-ok" and n <= 3):
            return self.answer(503, {"Retry-After": "0"})
        if mode == "replaced" and self.headers.get("If-Match") not in (None, etag):
            return self.answer(412)
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if mode == "503-mid-load" and match is not None and int(match[1]) > 0:  # once, on a read of tensors
            with server.lock:
                first_time, server.failed_mid_load = not server.failed_mid_load, True
            if first_time:
                return self.answer(503, {"Retry-After": "0"})
        if mode == "no-range" or match is None:
            return self.answer(200, {"ETag": etag}, data)
        first, last = int(match[1]), min(int(match[2]), len(data) - 1)
        body = data[first:last + 1]
        headers = {"ETag": etag, "Content-Range": f"bytes {first}-{last}/{len(data)}"}
        big = len(body) >= 1 << 20
        if mode == "drop" and big and first_time:
            return self.reset()  # before any byte of the response
        if mode == "reset" and big and first_time:
            self.answer(206, headers, body, send=len(body) // 2)
            return self.reset()
        if mode == "stall" and big and server.stall_once():
            self.answer(206, headers, body, send=4096)
            time.sleep(20)  # far longer than --stall-timeout 1 allows
            return self.reset()
        if mode == "chunked":  # no Content-Length: the body's end is in the stream
            return self.answer_chunked(206, headers, body)
        self.answer(206, headers, body)
        if mode == "closes-idle":  # as a server closing a kept-alive connection between requests, unannounced
            self.close_connection = True

    def answer(self, status, headers=None, body=b"", send=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:send] if send is not None else body)
        self.wfile.flush()

    def answer_chunked(self, status, headers, body):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for at in range(0, len(body), 100_000):
            part = body[at:at + 100_000]
            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def reset(self):
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


def case_faults():
    root = WORK / "faults"
    shutil.rmtree(root, ignore_errors=True)
    make_sample(root / "s", 8, 1)
    path = root / "s" / "model-00001-of-00001.safetensors"
    expected = local_hash(path)
    opts = ("--slot-mib", "2", "--staging-mib", "8", "--stall-timeout", "1")

    def run(mode):
        server = FaultServer(root, mode)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/s/{path.name}"
        started = time.monotonic()
        result = cli("hash", url, *opts)
        server.shutdown()
        server.server_close()
        return result, server.requests, time.monotonic() - started, url

    for mode in ("reset", "drop", "503-then-ok", "stall", "chunked"):
        (code, out, err), requests, seconds, _ = run(mode)
        check(code == 0 and out == expected, f"{mode}: the right bytes ({requests} requests, {seconds:.1f} s)" +
              (f": {err.strip()}" if code else ""))
        if mode == "stall":
            check(seconds < 15, f"stall: the stalled response was given up after --stall-timeout 1 ({seconds:.1f} s)")
    # The requests sent again after a failure count in the load's retries; those sent again on a
    # new connection because the server closed an idle one do not.
    for mode, expected_retries in (("503-mid-load", 1), ("closes-idle", 0)):
        server = FaultServer(root, mode)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        code, out, err = cli("load", "--device", "cpu", "--json", f"http://127.0.0.1:{server.server_address[1]}/s/{path.name}", *opts)
        server.shutdown()
        server.server_close()
        retries = json.loads(out)["retries"] if code == 0 else -1
        check(retries == expected_retries, f"{mode}: load --json counts {expected_retries} retries ({retries}; {err.strip()[:200]})")
    for mode, pattern in (("replaced", "changed on the server since its header was read \\(If-Match failed\\)"),
                          ("replaced-ignoring-if-match", "changed on the server since its header was read \\(ETag \"v1-.*\" then, \"v2-")):
        (code, out, err), *_ = run(mode)
        check(code != 0 and re.search(pattern, err) is not None and out == "", f"{mode}: refused, no digest printed ({err.strip()[:200]})")
    cases = (("no-range", "ignores range requests", None), ("forbidden", "HTTP 403", 1), ("unavailable", "HTTP 503.*5 tries", 5))
    for mode, pattern, requests_expected in cases:
        (code, out, err), requests, *_ = run(mode)
        ok = code != 0 and re.search(pattern, err) is not None and (requests_expected is None or requests == requests_expected)
        check(ok, f"{mode}: fails with /{pattern}/ after {requests} requests ({err.strip()[:200]})")


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    try:
        {"http": case_http, "tls": case_tls, "hub": case_hub, "bad": case_bad, "faults": case_faults}[CASE]()
    except Unavailable as e:  # nginx missing or not starting
        skip(str(e))
    if failures:
        print(f"{len(failures)} failed")
        sys.exit(1)


if __name__ == "__main__":
    main()
