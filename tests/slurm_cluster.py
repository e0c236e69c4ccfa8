"""A real single-node Slurm cluster on this machine, for tests: munged, slurmctld and slurmd from Debian's
munge and slurm-wlm packages (.ci/install-slurm.sh), on loopback and free ports, with every file (config,
key, state, spool, logs) under one temporary folder. Nothing in /etc is used or changed.

    with SlurmCluster(folder) as cluster:
        job = cluster.sbatch(["launcher/slurm/pretrain.sbatch"], env=...)
        cluster.wait_for_state(job, {"COMPLETED"}, timeout_s=600)

Exiting the context cancels every job and stops the three daemons, also after a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.helpers import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "scontrol", "scancel", "squeue", "sinfo")
# A job in "urgent" preempts those in "debug": their tasks get SIGTERM, then SIGKILL 60 s later (GraceTime), and
# they are requeued. A requeued job waits cred_expire + 1 s before it may start again (Slurm's default is 120 s), then for the next
# pass of the main scheduling loop (sched_interval, 60 s by default): 10 s and 2 s keep the tests short.
CRED_EXPIRE_S = 10

SLURM_CONF = """\
ClusterName=tbpstest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket,cred_expire={cred_expire}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MpiDefault=none
KillWait=30
MinJobAge=3600
NodeName=localhost CPUs={cpus} RealMemory=1024 State=UNKNOWN
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=60
PartitionName=urgent Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
"""


def missing_commands() -> list[str]:
    return [name for name in (*DAEMONS, "mungekey", *COMMANDS) if shutil.which(name) is None]


class SlurmCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = os.environ | {"SLURM_CONF": str(self.conf)}
        self.daemons: list[subprocess.Popen] = []

    def __enter__(self) -> SlurmCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        for folder in ("state", "spool", "log"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge.key"
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True, capture_output=True)
        key.chmod(0o600)
        self.conf.write_text(
            SLURM_CONF.format(
                root=self.root,
                ctld_port=free_port(),
                slurmd_port=free_port(),
                cred_expire=CRED_EXPIRE_S,
                cpus=2,  # fixed, whatever the host has (config_overrides): the preemption test needs both taken
            )
        )
        munge = ["--key-file", str(key), "--socket", str(self.root / "munge.socket")]
        munge += ["--pid-file", str(self.root / "munged.pid"), "--seed-file", str(self.root / "munged.seed")]
        self._daemon(["munged", "--foreground", "--force", *munge, "--log-file", str(self.root / "log/munged.log")])
        self._wait(lambda: (self.root / "munge.socket").exists(), "munged to open its socket", 30)
        self._daemon(["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._daemon(["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)])
        self._wait(self._node_idle, "the node to become idle", 90)

    def _daemon(self, command: list[str]) -> None:
        log = (self.root / "log" / f"{command[0]}.out").open("w")
        self.daemons.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env))

    def _node_idle(self) -> bool:
        for daemon in self.daemons:
            if daemon.poll() is not None:
                raise RuntimeError(f"{daemon.args[0]} exited with {daemon.returncode}; logs in {self.root / 'log'}")
        result = self.run(["sinfo", "-h", "-n", "localhost", "-o", "%t"], check=False)
        return result.returncode == 0 and result.stdout.strip() == "idle"

    @staticmethod
    def _wait(condition, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancels every job, waits for their processes to go, then stops the daemons (slurmd first)."""
        if len(self.daemons) == len(DAEMONS):
            self.run(["scancel", "--full", "--user", "root"], check=False)
            with contextlib.suppress(TimeoutError):
                self._wait(lambda: not self.run(["squeue", "-h"], check=False).stdout.strip(), "jobs to end", 60)
        for daemon in reversed(self.daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        self.daemons.clear()

    def run(self, command: list[str], *, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(command, env=env or self.env, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def sbatch(self, arguments: list[str], *, cwd: Path, env: dict | None = None) -> int:
        command = ["sbatch", "--parsable", *arguments]
        result = subprocess.run(
            command, cwd=cwd, env=self.env | (env or {}), capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"sbatch failed: {result.stderr.strip()}")
        return int(result.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """scontrol's fields of a job (JobState, Restarts, ExitCode, ...)."""
        text = self.run(["scontrol", "show", "job", "--oneliner", str(job_id)]).stdout
        return dict(item.split("=", 1) for item in text.split() if "=" in item)

    def wait_for_state(self, job_id: int, states: set[str], *, timeout_s: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while True:
            fields = self.job(job_id)
            if fields["JobState"] in states:
                return fields
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} still {fields['JobState']} after {timeout_s} s (waiting for {states})"
                )
            time.sleep(1)
