"""`raytev serve` as a user runs it: its own local Ray, Serve's HAProxy front, vector search equal to the
in-process search, the token enforced, and Ctrl-C (SIGTERM) stopping it promptly."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
from helpers import free_port

from raytev.encoding.embeddings import EmbeddingsManifest, EmbeddingsWriter
from raytev.index.search import search

pytestmark = pytest.mark.slow

TOKEN = "cli-token"



def wait_for_info(url: str, process: subprocess.Popen, log, timeout: float = 240) -> dict:
    """The service's /info once it answers; fails with the command's output if it exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            log.seek(0)
            pytest.fail(f"raytev serve exited with {process.returncode}:\n{log.read().decode(errors='replace')}")
        try:
            answer = requests.get(f"{url}/info", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
            if answer.status_code == 200:
                return answer.json()
        except (requests.ConnectionError, requests.Timeout):  # HAProxy accepts before the ingress is ready
            pass
        time.sleep(1)
    pytest.fail("raytev serve did not answer in time")


def wait_for_banner(log_path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until `raytev serve` prints that it is serving (its deploy call has returned)."""
    deadline = time.time() + timeout
    while b"serving " not in log_path.read_bytes():
        assert process.poll() is None and time.time() < deadline, log_path.read_text(errors="replace")
        time.sleep(0.5)


def haproxy_listening(command_pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the HAProxy processes under `command_pid` listen on."""
    import psutil

    listening = set()
    for process in psutil.Process(command_pid).children(recursive=True):
        try:
            if process.name() == "haproxy" or "haproxy" in " ".join(process.cmdline()[:1]):
                listening |= {(connection.laddr.ip, connection.laddr.port) for connection in
                              process.net_connections("tcp") if connection.status == psutil.CONN_LISTEN}
        except psutil.Error:
            continue
    return listening


def test_raytev_serve_behind_haproxy_answers_like_the_in_process_search(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype("float32")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"doc{i}" for i in range(len(vectors))]
    writer = EmbeddingsWriter(tmp_path / "emb", EmbeddingsManifest(model="random", dim=16, kind="passages",
                                                                   planned_shards=1))
    writer.write_shard(0, ids, vectors)
    queries = vectors[:5] + 0.1 * rng.standard_normal((5, 16)).astype("float32")
    port = free_port()
    command = [sys.executable, "-m", "raytev", "serve", "--index", str(tmp_path / "emb"), "--port", str(port),
               "--address", "local", "--http_ingress", "haproxy", "--auth_token", TOKEN]
    with open(tmp_path / "serve.log", "w+b") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            info = wait_for_info(url, process, log)
            assert info["http_front"] == "haproxy" and info["ntotal"] == 300
            answer = requests.post(f"{url}/search", json={"vectors": queries.tolist(), "k": 7},
                                   headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
            assert answer.status_code == 200, answer.text
            served = [[hit["docid"] for hit in row] for row in answer.json()["results"]]
            _, expected = search(str(tmp_path / "emb"), queries, 7)
            assert served == [[str(docid) for docid in row] for row in expected]
            assert requests.post(f"{url}/search", json={"vectors": queries.tolist()}, timeout=30).status_code == 401
            # HAProxy's statistics page and metrics (Serve binds them to every interface) are on loopback only.
            listening = haproxy_listening(process.pid)
            assert {8404, 9101, port} <= {port for _, port in listening}, listening
            assert {host for host, _ in listening} == {"127.0.0.1"}, listening
            wait_for_banner(tmp_path / "serve.log", process)  # HAProxy answers before Serve reports RUNNING
            printed = (tmp_path / "serve.log").read_text(errors="replace")  # each replica's memory, from its /proc
            for replica in ("IndexShard0", "Ingress"):
                assert re.search(rf"\n  {replica} +RSS [\d,]+ MiB \(own [\d,]+ MiB, mapped files [\d,]+ MiB", printed)
            started = time.time()
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)  # a second one (an impatient user, `timeout`) must not cut it short
            assert process.wait(timeout=90) == 0
            assert time.time() - started < 60  # not Serve's 30 s draining per ingress replica and more
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # closed connections may linger
                probe.bind(("127.0.0.1", port))  # nothing (HAProxy) was left listening on the port
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # with the Ray it started
                process.wait()
