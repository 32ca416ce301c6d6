"""Fixtures: a real flashmemd, built from this checkout (go build -o into a temp dir) or taken
from $FLASHMEMD_BIN, started on a temp socket and data dir with --metrics off."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "clients", "python"))

CONFIG = """
log_level = "debug"
[gpu]
mode = "off"
[host]
budget_bytes = 268435456
[indexer]
default_model = "small"
first_keep = 64
last_keep = 256
fallback_ratio = 1.0
[[indexer.random]]
name = "small"
seed = 7
hidden = 64
rank = 32
heads = 4
head_dim = 128
target_layers = 3
"""


@pytest.fixture(scope="session")
def flashmemd_bin(tmp_path_factory):
    b = os.environ.get("FLASHMEMD_BIN")
    if b:
        return b
    out = str(tmp_path_factory.mktemp("bin") / "flashmemd")
    go = shutil.which("go") or "/usr/local/go/bin/go"
    r = subprocess.run([go, "build", "-o", out, "./cmd/flashmemd"], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail("building flashmemd: %s\n%s" % (r.returncode, r.stderr))
    return out


class Daemon:
    """A real flashmemd under root (config text: CONFIG unless given; socket: root/fm.sock
    unless given)."""

    def __init__(self, binary, root, config=None, socket=None):
        self.binary = binary
        self.root = root
        self.socket = socket or os.path.join(root, "fm.sock")
        self.data = os.path.join(root, "data")
        self.config = os.path.join(root, "flashmemd.toml")
        with open(self.config, "w") as f:
            f.write(CONFIG if config is None else config)
        self.proc = None
        self.log = os.path.join(root, "flashmemd.log")

    def start(self):
        logf = open(self.log, "ab")
        since = logf.tell()
        env = dict(os.environ, NOTIFY_SOCKET="")
        self.proc = subprocess.Popen([self.binary, "--config", self.config, "--socket", self.socket,
                                      "--data-dir", self.data, "--metrics", "off"],
                                     stdout=logf, stderr=subprocess.STDOUT, env=env)
        logf.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("flashmemd exited at start:\n" + self.read_log())
            with open(self.log, "rb") as f:
                f.seek(since)
                up = b"msg=serving" in f.read()
            if up:
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("flashmemd did not start:\n" + self.read_log())

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def read_log(self):
        with open(self.log, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]


@pytest.fixture(scope="session")
def daemon(flashmemd_bin):
    root = tempfile.mkdtemp(prefix="flashmem-py-")
    d = Daemon(flashmemd_bin, root).start()
    yield d
    d.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_daemon(flashmemd_bin):
    """A daemon of the test's own (for restarts and on-disk corruption)."""
    root = tempfile.mkdtemp(prefix="flashmem-py-")
    d = Daemon(flashmemd_bin, root).start()
    yield d
    d.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def client(daemon):
    import flashmem
    c = flashmem.connect(daemon.socket, client_name="pytest")
    yield c
    c.close()
