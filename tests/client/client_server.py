"""A real `keel apiserver` subprocess on sqlite for the client's end-to-end tests: started,
stopped (SIGTERM or SIGKILL) and restarted on the same port and database."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

START_TIMEOUT = 60.0


APISERVER = (sys.executable, "-m", "keel", "apiserver")


class ApiServerProcess:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.state_dir / f"apiserver-{self.starts}.log"

    def start(self) -> None:
        assert self.process is None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig.unlink(missing_ok=True)
        self.starts += 1
        command = [
            *APISERVER,
            "--store", f"sqlite:///{self.state_dir / 'keel.db'}",
            "--listen", f"127.0.0.1:{self.port}",
            "--state-dir", str(self.state_dir),
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"apiserver exited: {self.log.read_text()}")
            if self.kubeconfig.exists():
                config = yaml.safe_load(self.kubeconfig.read_text())
                server = config["clusters"][0]["cluster"]["server"]
                self.port = int(server.rsplit(":", 1)[1])
                try:
                    with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                        if response.status == 200:
                            return
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
            time.sleep(0.05)  # polling for the condition, with a deadline
        raise RuntimeError(f"apiserver not ready in {START_TIMEOUT}s: {self.log.read_text()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()
