"""Runs tests/scripts/schedule_trainer.py as separate processes: a plain run, a run that the
caller SIGKILLs at given batches and restarts until it finishes, and a 2-worker
MultiWorkerMirroredStrategy run on 127.0.0.1. Shared by the tests and benchmarks/reliability.py.
Every wait is bounded: a process that outlives its limit is killed and reported.
"""

import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np

TRAINER = pathlib.Path(__file__).with_name("schedule_trainer.py")
REPO = TRAINER.parents[2]


class RunError(AssertionError):
    """A trainer process failed, hung or was never killed where it should have been."""


def _env(extra=None):
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=path)
    env.pop("TF_CONFIG", None)
    return env | (extra or {})


def _start(out, arguments, env=None, log_name="trainer"):
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / f"{log_name}.log", "ab")  # noqa: SIM115 (closed by _finish)
    process = subprocess.Popen(
        [sys.executable, str(TRAINER), "--out", str(out), *arguments],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(env),
        cwd=REPO,
    )
    process.log = log
    process.log_path = out / f"{log_name}.log"
    return process


def _tail(process, chars=3000):
    process.log.close()
    return process.log_path.read_text(errors="replace")[-chars:]


def _finish(process, deadline):
    try:
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired as error:
        process.kill()
        process.wait()
        message = f"trainer pid {process.pid} ran past its time limit:\n{_tail(process)}"
        raise RunError(message) from error
    if code != 0:
        raise RunError(f"trainer exited with {code}:\n{_tail(process)}")
    process.log.close()


def start_plain(out, schedules=None, strategy="none"):
    """Starts one uninterrupted run; returns the process (pass it to `wait`)."""
    arguments = ["--strategy", strategy]
    if schedules:
        arguments += ["--schedules", ",".join(schedules)]
    return _start(out, arguments)


def wait(process, timeout=600):
    _finish(process, time.monotonic() + timeout)


def run_plain(out, schedules=None, strategy="none", timeout=600):
    wait(start_plain(out, schedules, strategy), timeout)


@dataclasses.dataclass
class FaultRun:
    """What `run_with_kills` did: one entry per SIGKILL, and the number of processes."""

    kills: list
    processes: int


def run_with_kills(out, kill_at, schedules=None, timeout=600):
    """Runs the trainer with BackupAndRestore, SIGKILLs it at every `kill_at` point
    (`(schedule, epoch, batch)`: the trainer waits there after writing a marker file) and
    restarts it until it finishes. Raises `RunError` if a kill point is never reached or the
    whole thing takes longer than `timeout` seconds."""
    out = pathlib.Path(out)
    points = ",".join(f"{s}:{e}:{b}" for s, e, b in kill_at)
    arguments = ["--backup", "--kill-at", points]
    if schedules:
        arguments += ["--schedules", ",".join(schedules)]
    deadline = time.monotonic() + timeout
    kills, processes = [], 0
    while True:
        process = _start(out, arguments)
        processes += 1
        killed = None
        while process.poll() is None and time.monotonic() < deadline:
            markers = {p.name for p in out.glob("kill-*.json")}
            fresh = markers - {k["marker"] for k in kills}
            if fresh:
                marker = sorted(fresh)[0]
                info = json.loads((out / marker).read_text())
                if info["pid"] != process.pid:
                    raise RunError(f"marker {marker} written by pid {info['pid']}")
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                killed = info | {"marker": marker}
                kills.append(killed)
                break
            time.sleep(0.1)
        if killed is not None:
            if process.returncode != -signal.SIGKILL:
                raise RunError(f"trainer ended with {process.returncode}, not by SIGKILL")
            process.log.close()
            continue
        _finish(process, deadline)
        break
    if len(kills) != len(kill_at):
        raise RunError(f"{len(kill_at)} kill points, {len(kills)} reached: {kills}")
    return FaultRun(kills=kills, processes=processes)


def free_ports(count):
    """`count` TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def run_multiworker(out, workers=2, schedules=None, timeout=600):
    """Runs the trainer under MultiWorkerMirroredStrategy, one process per worker on
    127.0.0.1; each writes into OUT/worker-<index>. Every process is killed at `timeout`. A
    port taken between `free_ports` and the workers' start gets one retry on new ports."""
    try:
        _multiworker_once(out, workers, schedules, timeout)
    except RunError as error:
        if "already in use" not in str(error) and "Failed to bind" not in str(error):
            raise
        _multiworker_once(out, workers, schedules, timeout)


def _multiworker_once(out, workers, schedules, timeout):
    out = pathlib.Path(out)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(workers)]}
    arguments = ["--strategy", "multiworker", "--time-limit", str(int(timeout))]
    if schedules:
        arguments += ["--schedules", ",".join(schedules)]
    processes = []
    for index in range(workers):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(_start(out, arguments, {"TF_CONFIG": config}, log_name=f"worker-{index}"))
    deadline = time.monotonic() + timeout
    try:
        for process in processes:
            _finish(process, deadline)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def load_variables(path):
    """{variable name: array with one row per local replica} from a trainer .npz."""
    with np.load(path) as data:
        names = [str(n) for n in data["names"]]
        return {name: data[f"v{i:03d}"] for i, name in enumerate(names)}


def epoch_log(path):
    """The trainer's per-epoch state lines: a list of dicts (pid, epoch, state)."""
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line]
