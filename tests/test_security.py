"""Nothing fedsim starts or reads lets anyone in (docs/security.md).

- Crafted inputs — a trace and a topology file of garbage, a run directory whose
  files name code or are not what their names say — each end in one line and exit 2
  (``fedsim report`` may also just work), and the marker file a payload would create
  stays absent. Crafted checkpoints for ``fedsim resume`` are in
  tests/test_checkpoint_format.py.
- ``--out`` naming a file or an impossible place is one line and exit 2.
- A real local run on the Ray engine: its Ray refuses a client without the token
  (promptly), and what its processes listen on, read from the operating system's
  socket table, is loopback only.
- Joining a cluster without token authentication is refused unless the scenario
  opts in (``engine.allow_unauthenticated_cluster``).
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import tomli_w
from typer.testing import CliRunner

from fedsim.cli import app as cli_app
from fedsim.engine.ray_runtime import probe, ray_token
from tests.helpers import digits_scenario, run_cli, write_scenario
from tests.helpers_fake_runs import BASE, write_fake_run

ROOT = Path(__file__).resolve().parents[1]
APP = Path(__file__).parent / "fixtures" / "faulty_client_app.py"
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def one_line_error(done: subprocess.CompletedProcess[str], *parts: str) -> str:
    """The command failed with exit 2 and exactly one line on stderr, naming ``parts``."""
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-3000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


class Payload:
    """What unpickling this would do: create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def evil_plugin(tmp_path: Path, marker: Path) -> Path:
    """A plugin file that creates ``marker`` when imported, with every name a scenario
    might point at."""
    plugin = tmp_path / "evil.py"
    plugin.write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path
            Path({str(marker)!r}).write_text("imported")
            app = make_model = Evil = None
            """
        )
    )
    return plugin


def cli_in_process(*args: str) -> subprocess.CompletedProcess[str]:
    """The command run by the CLI's own code in this process, where a payload that ran
    would leave its marker just the same (a process of its own costs seconds of start)."""
    result = CliRunner().invoke(cli_app, list(args))
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


# --- crafted files to read ---------------------------------------------------------


def test_garbage_trace_file_is_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    (tmp_path / "trace.csv").write_bytes(b"\x00\xff\xfe garbage\n,,,\n" + os.urandom(256))
    (tmp_path / "trace.parquet").write_bytes(pickle.dumps(Payload(marker)))
    for name in ("trace.csv", "trace.parquet"):
        scenario = digits_scenario(participation={"pattern": "trace", "trace": name})
        path = write_scenario(tmp_path, scenario, f"{name}.toml")
        done = cli_in_process("participation", str(path), "--out", str(tmp_path / "p.png"))
        one_line_error(done, "participation.trace")
    assert not marker.exists()


def test_garbage_topology_file_is_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    (tmp_path / "edges.txt").write_bytes(pickle.dumps(Payload(marker)) + os.urandom(64))
    scenario = digits_scenario(
        strategy={"name": "gossip", "topology_file": "edges.txt"}, engine={"kind": "inline"}
    )
    scenario["engine"].pop("num_actors")
    path = write_scenario(tmp_path, scenario)
    done = run_cli("run", str(path), "--out", str(tmp_path / "run"), cwd=ROOT)
    one_line_error(done, "strategy.topology_file")
    assert not marker.exists()


def test_pickled_data_set_naming_code_is_one_line(tmp_path: Path) -> None:
    """CIFAR's "python version" batches are pickles: only arrays and containers load."""
    marker = tmp_path / "marker"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": [0]}))
    scenario = digits_scenario(data={"dataset": "cifar10", "path": str(folder)})
    scenario["engine"] = {"kind": "inline"}
    path = write_scenario(tmp_path, scenario)
    done = run_cli("run", str(path), "--out", str(tmp_path / "run"), cwd=ROOT)
    one_line_error(done, "data.path", "CIFAR python pickle batches")
    assert not marker.exists()


def fake_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "shared-run"
    write_fake_run(BASE, run_dir)
    return run_dir


def test_report_never_imports_code_a_run_directory_names(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    plugin = evil_plugin(tmp_path, marker)
    run_dir = fake_run(tmp_path)
    raw = dict(BASE)
    raw["model"] = {"factory": f"{plugin}:make_model"}
    raw["client"] = {**BASE["client"], "app": f"{plugin}:app"}
    raw["strategy"] = {"name": f"{plugin}:Evil"}
    raw["participation"] = {"pattern": "script", "script": str(plugin), **BASE["participation"]}
    (run_dir / "scenario.toml").write_text(tomli_w.dumps(raw))
    done = run_cli("report", str(run_dir), "--out", str(tmp_path / "report"), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "report" / "summary.md").is_file()
    assert not marker.exists()


@pytest.mark.parametrize(
    "name, content",
    [
        ("summary.json", b'{"final_accuracy": {"__class__": "os.system"}, "rounds": "rm -rf"}'),
        ("summary.json", b"\x80\x04not json at all"),
        ("events.jsonl", b'{"event": "started"\n\x00\x01garbage'),
        ("scenario.toml", b'name = "x"\n[[[not toml'),
        ("metrics.parquet", b"pickle"),  # replaced by a pickle below
        ("participation.parquet", os.urandom(512)),
    ],
)
def test_crafted_run_files_are_one_line_or_data(tmp_path: Path, name: str, content: bytes) -> None:
    marker = tmp_path / "marker"
    run_dir = fake_run(tmp_path)
    if content == b"pickle":
        content = pickle.dumps(Payload(marker))
    (run_dir / name).write_bytes(content)
    np.savez(run_dir / "final_model.npz", w=np.array([Payload(marker)], dtype=object))
    done = run_cli("report", str(run_dir), "--out", str(tmp_path / "report"), cwd=ROOT)
    if done.returncode != 0:
        one_line_error(done, str(run_dir))
    assert not marker.exists()


# --- bad places to write -----------------------------------------------------------


@pytest.mark.parametrize("place", ["file", "/proc/nope"])
def test_bad_out_is_one_line(tmp_path: Path, place: str) -> None:
    existing = tmp_path / "a-file"
    existing.write_text("keep me")
    out = str(existing) if place == "file" else place
    scenario = str(ROOT / "scenarios" / "quickstart.toml")
    run_dir = fake_run(tmp_path)
    commands = [
        ("run", scenario, "--out", out),
        ("sweep", scenario, "--seeds", "1,2", "--out", out),
        ("report", str(run_dir), "--out", out),
        ("participation", scenario, "--out", f"{out}/p.png"),
        ("participation", scenario, "--out", str(tmp_path / "p.png"), "--csv", f"{out}/t.csv"),
    ]
    for args in commands:
        option = "--csv" if "--csv" in args else "--out"
        one_line_error(
            cli_in_process(*args),
            f"{option}: ",
            "/proc/nope" if place != "file" else str(existing),
        )
    assert existing.read_text() == "keep me"
    assert not (tmp_path / "p.png").exists()


# --- Ray: token authentication, loopback -------------------------------------------


def listening(processes: list[psutil.Process]) -> list[tuple[str, int, str, int]]:
    """(process name, pid, address, port) of every TCP socket they listen on."""
    table = []
    for process in processes:
        try:
            connections = process.net_connections(kind="tcp")
            name = process.name()
        except psutil.Error:
            continue
        for connection in connections:
            if connection.status == psutil.CONN_LISTEN:
                table.append((name, process.pid, connection.laddr.ip, connection.laddr.port))
    return sorted(table)


def machine_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback."""
    return [
        address.address
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.family == socket.AF_INET and not address.address.startswith("127.")
    ]


def run_processes(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def without_ray_settings() -> dict[str, str]:
    """This environment without RAY_* variables (what a user's shell has)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.mark.slow
def test_local_ray_run_refuses_a_client_without_the_token(tmp_path: Path) -> None:
    scenario = {
        "name": "open-door",
        "seed": 3,
        "rounds": 200,
        "data": {"num_clients": 4},
        "model": {"factory": f"{APP}:make_model"},
        "client": {"app": f"{APP}:app", "config": {"every_sleep_s": 0.2}},
        "participation": {"pattern": "always"},
        "strategy": {"name": "fedavg"},
        "engine": {"num_actors": 2, "num_cpus_per_client": 0.5},
    }
    path = write_scenario(tmp_path, scenario)
    process = subprocess.Popen(
        [sys.executable, "-m", "fedsim.cli", "run", str(path), "--out", str(tmp_path / "run")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=without_ray_settings(),
        start_new_session=True,
    )
    try:
        root = psutil.Process(process.pid)
        deadline = time.monotonic() + 240
        table: list[tuple[str, int, str, int]] = []
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            table = listening(run_processes(root))
            names = {name for name, *_ in table}
            if "gcs_server" in names and sum("ClientActor" in n for n in names) >= 1:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the run's Ray did not come up: {table}")
        time.sleep(2)  # the second actor, the agents
        table = listening(run_processes(root))
        print("\nwhat the run's processes listen on (name, pid, address, port):")
        for row in table:
            print("  ", *row)
        assert {ip for _, _, ip, _ in table} <= LOOPBACK, table
        assert any(name == "raylet" for name, *_ in table), table
        gcs = next(f"{ip}:{port}" for name, _, ip, port in table if name == "gcs_server")
        gcs = gcs.replace("::ffff:", "")

        assert probe(gcs, None) == "refused"  # no token: a gRPC call is turned away
        assert probe(gcs, "not-the-token") == "refused"
        assert probe(gcs, ray_token()) == "accepted"

        # From the network: nothing listens on this machine's other addresses.
        for address in machine_addresses():
            for _, _, _, port in table:
                with pytest.raises(OSError):
                    socket.create_connection((address, port), timeout=5).close()

        # Another user of this machine: a Ray driver on loopback without the token
        # (RAY_AUTH_MODE unset, Ray's default) is refused.
        attempt = textwrap.dedent(
            f"""
            import ray
            try:
                ray.init(address={gcs!r}, logging_level="ERROR")
            except Exception as error:
                print("refused:", type(error).__name__)
            else:
                print("connected", ray.cluster_resources())
            """
        )
        started = time.monotonic()
        intruder = subprocess.run(
            [sys.executable, "-c", attempt],
            capture_output=True,
            text=True,
            timeout=120,
            env={
                **without_ray_settings(),
                "HOME": str(tmp_path),  # no ~/.ray/auth_token
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # else Ray dials the machine's address
            },
        )
        took = time.monotonic() - started
        print(f"client without the token: {intruder.stdout.strip()} after {took:.1f} s")
        assert intruder.stdout.startswith("refused"), (intruder.stdout, intruder.stderr[-2000:])
        assert took < 120
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # stops after the round, shuts Ray down
            try:
                process.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()


@pytest.mark.slow
def test_addresses_that_cannot_be_checked_are_one_line(tmp_path: Path) -> None:
    """A Ray Client address needs the opt-in; a port that is not a Ray GCS is not joined."""
    with socket.socket() as listener:  # accepts TCP, speaks no gRPC
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        for number, (address, expected) in enumerate(
            [
                ("ray://127.0.0.1:10001", "allow_unauthenticated_cluster"),
                (f"127.0.0.1:{port}", "cannot check its authentication"),
            ]
        ):
            path = write_scenario(tmp_path, digits_scenario(engine={"ray_address": address}))
            started = time.monotonic()
            out = str(tmp_path / f"run{number}")
            done = run_cli("run", str(path), "--out", out, cwd=tmp_path)
            one_line_error(done, "engine.ray_address", expected)
            assert time.monotonic() - started < 60


@pytest.mark.slow
def test_joining_a_cluster_without_authentication_needs_the_opt_in(tmp_path: Path) -> None:
    env = {**without_ray_settings(), "RAY_AUTH_MODE": "disabled"}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # this test's own Ray: loopback only
    head = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import ray, sys, time; ray.init(num_cpus=2, include_dashboard=False);"
            "print(ray.get_runtime_context().gcs_address, flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert head.stdout is not None
        address = head.stdout.readline().strip()
        assert probe(address, None) == "accepted"  # the open door the opt-in is about
        scenario = digits_scenario(engine={"ray_address": address})
        path = write_scenario(tmp_path, scenario)
        started = time.monotonic()
        done = run_cli("run", str(path), "--out", str(tmp_path / "run"), cwd=tmp_path)
        line = one_line_error(done, "engine.ray_address", "allow_unauthenticated_cluster")
        assert "without a token" in line
        assert time.monotonic() - started < 60

        opted_in = run_cli(
            *("run", str(path), "--out", str(tmp_path / "opted-in"), "--set", "rounds=1"),
            *("--set", "engine.allow_unauthenticated_cluster=true"),
            *("--set", "engine.num_actors=1"),
            cwd=tmp_path,
        )
        assert opted_in.returncode == 0, opted_in.stderr[-3000:]
        assert "no token authentication" in opted_in.stderr
    finally:
        os.killpg(head.pid, signal.SIGINT)
        try:
            head.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.communicate()
