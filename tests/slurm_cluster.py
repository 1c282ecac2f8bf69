"""A real single-node SLURM cluster for the test suite: private config, own daemons, clean stop.

    with local_slurm_cluster(Path("/tmp/x"), gpus=2) as cluster:
        subprocess.run(["sbatch", "--wrap", "true"], env=cluster.env)

What it does (facts from /work/shared/notes/slurm-local.md):
- writes slurm.conf (and, with `gpus > 0`, gres.conf whose `File=` entries are symlinks to /dev/null,
  so the node advertises `gpu:a100:<gpus>` that no program can use) under a private directory, with
  ports picked free so it never meets another cluster on the machine;
- starts a munged of its own as the `munge` user, on a socket of its own (/run/munge/<cluster>/munge.socket,
  named in slurm.conf's `AuthInfo=socket=`), then slurmctld and slurmd in the foreground as children of this
  process, and waits until the node is idle. Two clusters at once never share a munged: a shared one went
  away with the cluster that started it, and the other cluster's clients and job steps failed to
  authenticate (squeue answered nothing, job steps could not report their end);
- `cluster.env` is os.environ plus SLURM_CONF: pass it to every client command;
- on exit cancels every job of this cluster, waits for the node to be idle (so no job process is left),
  then stops exactly the daemons it started and waits on their PIDs.

Several nodes on one host (`nodes=2`; facts from the notes' two-node section): Debian's Slurm is built
with multiple-slurmd support, so each node gets a `NodeName` line of its own with `NodeHostname` = this
host, `NodeAddr=127.0.0.1` and a `Port` of its own, per-node spool, PID and log files through `%n`, and
one `slurmd -N NODE` each. Node names are `<host>-n1`, `<host>-n2`, ...; scripts must take a node's
address from SLURM (`scontrol show node NAME` -> NodeAddr), as these names do not resolve.

`SlurmdParameters=config_overrides` lets the node offer the CPUs written in slurm.conf even when the
machine has fewer (so a job-array limit like %2 is what holds tasks back, not the cores).
`AuthInfo=cred_expire=5` (the smallest value slurmctld accepts) shortens the time a requeued job waits
before it may start again (120 s by default); `sched_interval=1` makes the main scheduler notice the end of
that wait at once (it otherwise runs every 60 s). `MinJobAge=5` and the other `SchedulerParameters` keep
`sbatch --wait` and array tasks prompt. `KillWait=30` (SLURM's default) is the time between the TERM of a
cancel and the SIGKILL: the trainers checkpoint within it, as on a real cluster.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import free_port

BINARIES = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel",
            "sinfo")
APT_LINE = "apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"

SLURM_CONF = """\
ClusterName=cifartest
FirstJobId={first_job_id}
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5,socket={munge_socket}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/run/slurmctld.pid
SlurmdPidFile={dir}/run/slurmd-%n.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={dir}/log/jobcomp.txt
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
EnforcePartLimits=ALL
MinJobAge=5
KillWait=30
SlurmdParameters=config_overrides
{gres_types}{node_lines}
PartitionName=debug Nodes={node_list} Default=YES MaxTime=INFINITE State=UP
"""


def skip_reason() -> str | None:
    """Why a SLURM test cannot run on this machine, or None when it can."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"SLURM/MUNGE binaries not found: {', '.join(missing)} (install with: {APT_LINE})"
    if os.geteuid() != 0:
        return "the local SLURM cluster runs slurmd as root; run the suite as root"
    return None


def _munge_works(sock: Path) -> bool:
    try:
        cred = subprocess.run(["munge", "-S", str(sock), "-n"], capture_output=True, timeout=10)
        if cred.returncode:
            return False
        return subprocess.run(["unmunge", "-S", str(sock)], input=cred.stdout, capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


_LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a daemon's child process before exec: get SIGTERM if the test process dies (PR_SET_PDEATHSIG),
    so a killed test session leaves no daemon behind."""
    _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM one child we started, wait for it; SIGKILL if it does not go."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class Cluster:
    dir: Path  # private directory: slurm.conf, gres.conf, state, spool, logs
    node: str  # the first node's name (`hostname -s` for a one-node cluster)
    cpus: int  # CPUs each node offers
    gpus: int  # fake GPUs each node offers (0 = no gres configured)
    env: dict[str, str] = field(default_factory=dict)  # os.environ + SLURM_CONF; pass to clients
    nodes: list[str] = field(default_factory=list)  # every node's name, first = `node`
    moved: dict[str, float] = field(default_factory=dict)  # job -> when start_now last moved its start

    @property
    def conf(self) -> Path:
        return self.dir / "slurm.conf"

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a client command against this cluster; text output captured."""
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def node_state(self) -> str:
        """"idle" when every node is idle, else the nodes' states (sinfo %t), comma-separated."""
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
        states = dict(line.split() for line in out.stdout.splitlines() if len(line.split()) == 2)
        found = [states.get(n, "?") for n in self.nodes]
        return "idle" if found and all(st == "idle" for st in found) else ",".join(found)

    def jobs(self) -> list[str]:
        """squeue lines `jobid|state`, array tasks one per line. A squeue that fails (a busy controller: "Socket
        timed out") is asked again: its empty answer would read as "no job left" and end a wait too early."""
        for _ in range(30):
            out = self.run("squeue", "-h", "-r", "-o", "%i|%T", check=False)
            if out.returncode == 0:
                return [line for line in out.stdout.splitlines() if line.strip()]
            time.sleep(1)
        raise RuntimeError(f"squeue kept failing: {out.stderr.strip()}")

    def wait_idle(self, timeout: float = 60) -> None:
        """Until no job is left and every node is idle (not allocated, not completing)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.jobs() and self.node_state() == "idle":
                return
            time.sleep(0.5)
        raise TimeoutError(f"SLURM nodes not idle after {timeout:.0f} s: state {self.node_state()!r}, "
                           f"jobs {self.jobs()}; logs in {self.dir / 'log'}")

    def start_now(self, job: str) -> bool:
        """A job waiting in PD (BeginTime), as a requeued one does, may start in a few seconds; True if it was
        moved. Never "now": slurmd refuses a batch job restarted within the second its previous run ended
        ("Job credential revoked") and the job fails; and a start already that close is left alone."""
        out = self.run("squeue", "-h", "-j", job, "-o", "%T|%r|%S", check=False)
        state, _, start = out.stdout.strip().partition("|BeginTime|")
        if state != "PENDING":
            return False
        try:
            wait = (datetime.datetime.fromisoformat(start) - datetime.datetime.now()).total_seconds()
        except ValueError:  # no begin time shown: nothing to move
            return False
        # Once per wait: moved again every few seconds, a job that had just become eligible was pushed back
        # each time before the scheduler placed it (a two-node job waited 5 minutes so).
        if wait <= 10 or time.monotonic() - self.moved.get(job, -60.0) < 30:
            return False
        self.moved[job] = time.monotonic()
        return self.run("scontrol", "update", f"JobId={job}", "StartTime=now+3", check=False).returncode == 0

    def jobcomp(self) -> list[dict[str, str]]:
        """Finished jobs and array tasks, from the jobcomp/filetxt log (one dict of KEY=VALUE per line)."""
        path = self.dir / "log" / "jobcomp.txt"
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text().splitlines():
            rows.append(dict(tok.split("=", 1) for tok in line.split() if "=" in tok))
        return rows


def _munge_dir(d: Path) -> Path:
    """This cluster's munged folder: under /run/munge (the munge user cannot reach pytest's private tmp)."""
    return Path("/run/munge") / f"cluster-{os.getpid()}-{d.name}"


def _write_config(d: Path, host: str, nodes: list[str], cpus: int, gpus: int) -> None:
    for sub in ("state", "spool", "run", "log", "dev"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for node in nodes:
        (d / "spool" / node).mkdir(parents=True, exist_ok=True)
    gres_types = gres = ""
    if gpus:
        # slurmd rejects plain files as GPU devices; symlinks to /dev/null pass its checks and stay unusable.
        for i in range(gpus):
            link = d / "dev" / f"nvidia{i}"
            if not link.is_symlink():
                link.symlink_to("/dev/null")
        files = f"{d}/dev/nvidia[0-{gpus - 1}]" if gpus > 1 else f"{d}/dev/nvidia0"
        (d / "gres.conf").write_text("".join(f"NodeName={n} Name=gpu Type=a100 File={files}\n" for n in nodes))
        gres_types, gres = "GresTypes=gpu\n", f"Gres=gpu:a100:{gpus} "
    if nodes == [host]:
        node_lines = f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 {gres}State=UNKNOWN"
    else:  # several slurmd on this host: a port of its own each
        node_lines = "\n".join(f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} CPUs={cpus} "
                               f"RealMemory=1000 {gres}State=UNKNOWN" for n in nodes)
    # Job ids of their own per cluster: train.sh and sweep.sh derive a rendezvous port from the job id, and
    # clusters started side by side (two in a session, parallel sessions) would all count from 1.
    first_job_id = 1 + (os.getpid() * 7919 + len(nodes) * 2503) % 15000
    (d / "slurm.conf").write_text(SLURM_CONF.format(
        dir=d, node=host, node_lines=node_lines, node_list=",".join(nodes), gres_types=gres_types,
        ctld_port=free_port(), slurmd_port=free_port(), first_job_id=first_job_id,
        munge_socket=_munge_dir(d) / "munge.socket"))


@contextlib.contextmanager
def local_slurm_cluster(directory: Path, gpus: int = 0, cpus: int | None = None, nodes: int = 1,
                        start_timeout: float = 60) -> Iterator[Cluster]:
    """Start a private cluster of `nodes` nodes on this host under `directory` (`gpus` fake GPUs and `cpus`
    CPUs per node); stop what was started on exit."""
    reason = skip_reason()
    if reason:
        raise RuntimeError(reason)
    directory = Path(directory).resolve()
    host = socket.gethostname().split(".")[0]
    names = [host] if nodes == 1 else [f"{host}-n{i + 1}" for i in range(nodes)]
    cluster = Cluster(dir=directory, node=names[0], cpus=cpus or os.cpu_count() or 1, gpus=gpus, nodes=names)
    _write_config(directory, host, names, cluster.cpus, gpus)
    cluster.env = {**os.environ, "SLURM_CONF": str(cluster.conf)}
    started: list[subprocess.Popen] = []  # stopped in reverse order
    logs = []
    try:
        munge = _munge_dir(directory)
        munge.mkdir(parents=True, exist_ok=True)
        shutil.chown(munge.parent, "munge", "munge")
        shutil.chown(munge, "munge", "munge")
        sock = munge / "munge.socket"
        log = open(directory / "log" / "munged.out", "w")  # noqa: SIM115 (closed in finally)
        logs.append(log)
        started.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={sock}", f"--pid-file={munge / 'munged.pid'}",
             f"--seed-file={munge / 'munged.seed'}", f"--log-file={munge / 'munged.log'}"],
            user="munge", group="munge", stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent))
        end = time.monotonic() + 20
        while not _munge_works(sock):
            if started[-1].poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"munged did not start; see {directory / 'log' / 'munged.out'}")
            time.sleep(0.1)
        daemons = [("slurmctld", ["slurmctld"])]
        daemons += [(f"slurmd-{n}", ["slurmd", "-N", n]) for n in names] if nodes > 1 else [("slurmd", ["slurmd"])]
        for label, argv in daemons:
            log = open(directory / "log" / f"{label}.out", "w")  # noqa: SIM115 (closed in finally)
            logs.append(log)
            started.append(subprocess.Popen([*argv, "-D", "-f", str(cluster.conf)], env=cluster.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=_die_with_parent))
        end = time.monotonic() + start_timeout
        while cluster.node_state() != "idle":
            dead = [p.args[0] for p in started if p.poll() is not None]
            if dead or time.monotonic() > end:
                raise RuntimeError(f"SLURM cluster did not come up ({', '.join(dead) or 'timeout'} ); "
                                   f"node state {cluster.node_state()!r}; logs in {directory / 'log'}")
            time.sleep(0.2)
        yield cluster
    finally:
        if any(p.args[0] == "slurmctld" and p.poll() is None for p in started):
            cluster.run("scancel", "--user", pwd.getpwuid(os.geteuid()).pw_name, check=False)
            with contextlib.suppress(TimeoutError, subprocess.TimeoutExpired):
                cluster.wait_idle(timeout=60)
        for proc in reversed(started):
            _stop(proc)
        for log in logs:
            log.close()
        shutil.rmtree(_munge_dir(directory), ignore_errors=True)


_STARTED: set[str] = set()


def _once(which: str) -> None:
    """A session fixture imported into a test module becomes one fixture per module, each with a cluster of
    its own (three one-node clusters at once in one worker, fighting over munge). tests/conftest.py is the
    one place that imports these fixtures; this fails the test that would start a second one."""
    if which in _STARTED:
        pytest.fail(f"a second {which} SLURM cluster in this process: import the fixture only in tests/conftest.py")
    _STARTED.add(which)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[Cluster]:
    """One cluster for the whole session: a node with 4 CPUs and 4 fake GPUs (gpu:a100:4), so GPU requests
    are accepted and up to 4 one-CPU tasks fit at once; jobs that ask for no GPU see a plain CPU node.
    Skips when the SLURM/MUNGE binaries are missing or not root, except under CI (CI set), where it fails."""
    reason = skip_reason()
    if reason and os.environ.get("CI"):  # CI installs and runs as root: a skip there would hide a failure
        pytest.fail(f"CI must run the SLURM tests: {reason}")
    if reason:
        pytest.skip(reason)
    _once("one-node")
    with local_slurm_cluster(tmp_path_factory.mktemp("slurm"), gpus=4, cpus=4) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def slurm_two_nodes(tmp_path_factory) -> Iterator[Cluster]:
    """A second cluster for the whole session: two nodes on this host (two slurmd), 1 CPU each, no GPU
    gres at all (a GPU request is refused, as on a CPU-only cluster). Skips or fails as slurm_cluster."""
    reason = skip_reason()
    if reason and os.environ.get("CI"):
        pytest.fail(f"CI must run the SLURM tests: {reason}")
    if reason:
        pytest.skip(reason)
    _once("two-node")
    with local_slurm_cluster(tmp_path_factory.mktemp("slurm2"), gpus=0, cpus=1, nodes=2) as cluster:
        yield cluster
