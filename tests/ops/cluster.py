"""A real ``ray start --head`` cluster on loopback, owned by one test module.

Why not the session's ``ray.init``: jobs are submitted to a standing cluster in production,
and ``ray job submit`` talks to its dashboard. Every port is chosen free, the temp dir is
private (short: Ray's unix sockets cap the path length), the head runs with ``--block`` in
its own process group, and tear-down terminates that group only — never ``ray stop``, which
would kill every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(n: int) -> list[int]:
    import socket

    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def cluster_env() -> dict[str, str]:
    """The environment every process of this cluster (and its clients) shares."""
    from llmvm_ray.config import RayConfig
    from llmvm_ray.runtime import ray_environment

    env = dict(os.environ)
    # What `init_ray` exports for a local Ray, and cluster/*.yaml set on every node.
    env.update(ray_environment(RayConfig()))
    env.update(
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_WAIT_POLICY="PASSIVE",
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.1",
        # As cluster/*.yaml set it: `ray job stop` leaves time for a cooperative cancel.
        RAY_JOB_STOP_WAIT_TIME_S="30",
        # `python` in a job's entrypoint is this interpreter, as on a node where it is installed.
        PATH=os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", ""))),
        # Workers import the package from this checkout (an installed copy would also do).
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    )
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass
class Head:
    proc: subprocess.Popen
    temp_dir: Path
    gcs_address: str
    dashboard_url: str
    log: Path

    def stop(self) -> None:
        """SIGTERM the head (it shuts its children down), then kill what is left of its group."""
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)  # then the rest of the group is killed outright
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)  # then the rest of the group is killed outright
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_head(num_cpus: int = 4, timeout_s: float = 90.0) -> Head:
    gcs, dash, client, node_mgr, obj_mgr, agent_grpc, agent_http, metrics, rt_env = free_ports(9)
    temp_dir = Path(tempfile.mkdtemp(prefix="rayops-", dir="/tmp"))
    log = temp_dir / "head.log"
    cmd = [
        RAY,
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        f"--num-cpus={num_cpus}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        f"--port={gcs}",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}",
        f"--node-manager-port={node_mgr}",
        f"--object-manager-port={obj_mgr}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={rt_env}",
        f"--temp-dir={temp_dir}",
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, env=cluster_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    head = Head(proc, temp_dir, f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", log)
    deadline = time.monotonic() + timeout_s
    import httpx

    while True:
        if proc.poll() is not None:
            head.stop()
            raise RuntimeError(f"ray start exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{head.dashboard_url}/api/version", timeout=2).status_code == 200:
                return head
        if time.monotonic() > deadline:
            head.stop()
            raise RuntimeError(f"dashboard not up after {timeout_s}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
