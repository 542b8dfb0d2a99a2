"""nginx on 127.0.0.1 for the tests of remote checkpoints (tests/remote/remote_test.py and
tests/python/test_remote.py): run by the current user from a configuration written into a work
directory, on free ports, stopped on leaving its `with` block. Only the standard library is used.

    with Nginx(work_dir, lambda port: f"server {{ listen 127.0.0.1:{port()}; root {root}; }}") as n:
        url = f"http://127.0.0.1:{n.ports[0]}/model.safetensors"

`servers(port)` returns nginx `server` blocks; each call of `port()` draws a free port. The access
log has one line per request: `port protocol status "authorization" uri`.
"""
import shutil
import socket
import subprocess
import time
from pathlib import Path


class Unavailable(Exception):
    """nginx is missing or did not start; the message says why (callers skip their test)."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, process=None, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Nginx:
    def __init__(self, work, servers):
        if shutil.which("nginx") is None:
            raise Unavailable("nginx is not installed (Debian: nginx-light)")
        self.dir = Path(work) / "nginx"
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "tmp").mkdir(parents=True)
        self.ports = []

        def port():
            self.ports.append(free_port())
            return self.ports[-1]

        blocks = servers(port)
        temp = " ".join(f"{k}_temp_path {self.dir}/tmp/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (self.dir / "nginx.conf").write_text(f"""
worker_processes 2;
error_log {self.dir}/error.log warn;
pid {self.dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 100000;
  {temp}
  log_format probe '$server_port $server_protocol $status "$http_authorization" $request_uri "$http_user_agent"';
  access_log {self.dir}/access.log probe;
  {blocks}
}}
""")

    def __enter__(self):
        self.process = subprocess.Popen(["nginx", "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir), "-e",
                                         str(self.dir / "error.log"), "-g", "daemon off;"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for port in self.ports:
            if not wait_for_port(port, self.process):
                self.process.kill()
                log = (self.dir / "error.log").read_text() if (self.dir / "error.log").exists() else ""
                raise Unavailable(f"nginx did not start on 127.0.0.1:{port}: {self.process.stderr.read().decode()} {log}")
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(10)

    def log(self):
        return (self.dir / "access.log").read_text()
