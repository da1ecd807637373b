"""A real `trikern serve` in a subprocess on 127.0.0.1 (the embedded model, CPU), for the server tests."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import httpx
from util import CHILD_ENV as ENV  # the serve tests import it from here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, log_path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "trikern", "serve", "--port", str(self.port), *args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=ENV)
        self._wait_ready(timeout=180)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def _wait_ready(self, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"trikern serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"trikern serve did not answer /health within {timeout} s:\n{self.log()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


_SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


def serving(log_path, *args: str):
    """A module fixture's body: a Server for the tests, stopped after them, whose log shows no traceback."""
    s = Server(log_path, *args)
    yield s
    s.stop()
    assert "Traceback" not in s.log(), s.log()


def openai_client(server: Server, timeout: float):
    import openai
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=timeout)


def metrics(url: str, headers=None) -> dict[str, float]:
    """GET /metrics as {'name{labels}': value} (HELP / TYPE lines skipped)."""
    r = httpx.get(url + "/metrics", headers=headers, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    out = {}
    for line in r.text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def wait_for(url: str, predicate, timeout: float = 60, headers=None) -> dict[str, float]:
    """Poll /metrics until `predicate(samples)` holds; the last samples."""
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(url, headers)
        if predicate(m) or time.monotonic() > deadline:
            return m
        time.sleep(0.05)
