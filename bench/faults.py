"""Fault run: ingest under load while processes die and the database restarts; nothing lost.

    uv run python bench/faults.py                          # 200,000 events, 4 clients
    uv run python bench/faults.py --events 20000 --seed 3  # a quick run

Everything runs against a PRIVATE PostgreSQL cluster (initdb into .data/faults-<pid>-<time>/pg,
a free port, removed at the end; the worker and gunicorn logs are kept there when a check fails), never the shared server of $DATABASE_URL: the run restarts it. As
root, initdb and pg_ctl run as the `postgres` user. The cluster runs with fsync=off: the
restart is a crash of PostgreSQL (`pg_ctl restart -m immediate`), not of the machine, so what
reached the kernel survives it either way.

Processes, as in production: gunicorn (config.wsgi, DEBUG off) taking Lago batches on
`POST /api/v1/events/batch`; one Celery worker (`celery -A bench.faults_celery worker --pool
prefork --concurrency 1`, Meterops' app with a 10 s broker visibility timeout so that the
messages of a killed worker come back within seconds rather than an hour) on a queue of its own in Redis database 13; a "beat" thread
that queues `metering.tasks.rollup_drain` and `billing.tasks.billing_usage_push` whenever the
queue is empty. The worker drains with a small ROLLUP_BATCH_SIZE, so a drain is many short
transactions; the provider is the simulated one (`BILLING_PROVIDER=simulated`, no seeded faults).

Clients retry like a product backend should: a batch that gets a connection error, a timeout or
a 5xx is sent again, same bytes, same transaction ids, until it gets a 200 (bounded: attempts
and time).

Injected while the clients send (each once a share of the batches is sent; the clients may
run only a tenth of the batches ahead of the next fault, so every fault lands during the load),
each recorded with its time, pid and where it landed:

1. kill -9 of a gunicorn worker (the master respawns it);
2. `pg_ctl restart -m immediate` of the private cluster;
3. kill -9 of the Celery pool process running a drain while its transaction has claimed inbox
   rows and not committed (its backend holds a rollup slot lock and RowExclusiveLock on the
   inbox); the worker starts another and, acks_late + reject_on_worker_lost, gets the message
   back at once;
4. the beat pauses so that a push backlog builds up; kill -9 of the whole Celery worker (main
   and pool processes) while a push is between recording its attempt and recording the
   provider's answer (ledger entries pending with first_sent_at set), preferably once the
   provider has recorded them (aimed for up to --push-aim seconds); a new worker is started
   and the broker hands the message back after the visibility timeout;
5. kill -9 of a gunicorn worker right after its ingest transaction committed (its session shows
   COMMIT, idle, within the last 10 ms), before the answer reaches the client: the client
   retries a batch that is already stored (aimed for up to 20 s, else any worker).

Then the run waits until the worker has nothing left (queue and unacknowledged messages empty,
the killed tasks redelivered) and the rollup inbox, push inbox and pending ledger entries are
empty, and checks:

- stored == sent: every transaction id sent is stored once, nothing else stored, every client
  got a 200 for every batch, no item answered conflict/rejected/quarantined;
- rollups == raw events: the nightly self-check (`metering.tasks.rollup_self_check`, run by the
  worker over the last 4 days; its RollupCheck row records what drifted before it repairs)
  finds no drifted bucket, and per meter the hourly and daily totals (count, sum) equal the raw
  events';
- every ledger entry sent exactly once: no pending or failed entries, every count/sum event has
  one entry, every sent/acknowledged entry has exactly one record at the simulated provider with
  its value, no identifier recorded twice, no record without an entry, nothing recorded for an
  entry that must never be sent, and per count/sum meter the provider's total equals the raw
  total. (A period-to-date entry attempted by the killed worker and then superseded by a newer
  value may be recorded once; it is counted and shown, not failed: see SUPERSEDED_NOTE.)

It prints the injections and the checks (figures, PASS/FAIL) and exits 1 on any failure.
tests/test_faults.py runs the same with 5,000 events.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import orjson
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import recreate_database  # noqa: E402
from bench.ingest import (  # noqa: E402
    METERS,
    SETUP,
    _children,
    free_port,
    make_bodies,
    server_env,
)
from metering.rollups_sql import ACCOUNT_SLOTS, ROLLUP_LOCK_KEY  # noqa: E402
from scripts.ensure_db import find_tool  # noqa: E402

DEFAULT_REDIS = "redis://127.0.0.1:6379/13"
DRAIN_TASK = "metering.tasks.rollup_drain"
PUSH_TASK = "billing.tasks.billing_usage_push"
SELF_CHECK_TASK = "metering.tasks.rollup_self_check"
DRAIN_KILL = "kill -9 celery pool process mid drain"
PUSH_KILL = "kill -9 celery worker (all) mid push"
MAX_ATTEMPTS = 200  # per batch
# The clients may run this share of the batches ahead of the next fault: requests are in flight
# when it lands, and the load does not finish before the faults do.
LEAD_SHARE = 0.10
BATCH_DEADLINE = 180.0  # seconds a client keeps retrying one batch


def log(message: str) -> None:
    print(f"[faults] {message}", flush=True)


class SetupError(RuntimeError):
    """The run cannot start here (no PostgreSQL binaries, no Redis...)."""


# --- the private cluster -------------------------------------------------------------------------


class PrivateCluster:
    """A throwaway PostgreSQL cluster on a free port, restarted by the run."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.port = free_port()
        self.run_as: list[str] = []
        self.initdb = find_tool("initdb")
        self.pg_ctl = find_tool("pg_ctl")
        self.started = False

    @property
    def options(self) -> str:
        return (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=80"
        )

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        if not self.initdb or not self.pg_ctl:
            raise SetupError("initdb/pg_ctl not found (install PostgreSQL's server binaries)")
        self.base.mkdir(parents=True, exist_ok=False)
        if os.geteuid() == 0:
            if subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
                raise SetupError("running as root without a postgres user")
            self.run_as = ["runuser", "-u", "postgres", "--"]
            subprocess.run(["chown", "-R", "postgres", str(self.base)], check=True)
        subprocess.run(
            [
                *self.run_as,
                self.initdb,
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-N",
                "-E",
                "UTF8",
                "--no-locale",
            ],
            check=True,
            capture_output=True,
        )
        self._ctl("start")
        self.started = True

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [
                *self.run_as,
                self.pg_ctl,
                "-D",
                str(self.data),
                "-l",
                str(self.base / "server.log"),
                "-w",
                "-t",
                "120",
                "-o",
                self.options,
                *args,
            ],
            check=True,
            capture_output=True,
        )

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def restart_immediate(self) -> tuple[int, int, float]:
        """Crash-restart: (old postmaster pid, new pid, seconds until it accepts connections)."""
        old = self.postmaster_pid()
        started = time.monotonic()
        self._ctl("-m", "immediate", "restart")
        return old, self.postmaster_pid(), time.monotonic() - started

    def stop(self) -> None:
        if self.started:
            subprocess.run(
                [*self.run_as, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
            )
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)


# --- processes -----------------------------------------------------------------------------------


class Supervisor:
    """Everything the run starts, stopped on exit whatever happens (finally and atexit)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.clients: list[multiprocessing.Process] = []
        self.cluster: PrivateCluster | None = None
        self.redis_cleanup = None
        self.stop_threads = threading.Event()
        self.done = False

    def add(self, proc: subprocess.Popen) -> subprocess.Popen:
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        if self.done:
            return
        self.done = True
        self.stop_threads.set()
        for client in self.clients:
            if client.is_alive():
                client.kill()
            client.join(timeout=5)
        for proc in self.procs:
            if proc.poll() is None:
                try:  # each was started in a session of its own: its group is its pid
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.redis_cleanup is not None:
            try:
                self.redis_cleanup()
            except Exception as exc:  # cleanup goes on
                log(f"redis cleanup failed: {exc}")
        if self.cluster is not None:
            self.cluster.stop()


def prepare_database(db_url: str, accounts: int) -> str:
    """Migrate the database, create bench/ingest.py's accounts, meters and key (one Django
    process for all of it); returns the raw API key."""
    code = "from django.core.management import call_command\n"
    code += "call_command('migrate', verbosity=0)\n"
    code += SETUP.format(meters=[m[:4] for m in METERS], accounts=accounts)
    out = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-c", code],
        env=server_env(db_url),
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


def start_gunicorn(db_url: str, workers: int, port: int, logfile: Path) -> subprocess.Popen:
    """gunicorn as bench/ingest.py starts it, its output to `logfile` (the faults make noise);
    wait_healthy tells when it answers."""
    command = [sys.executable, "-m", "gunicorn", "config.wsgi:application"]
    command += ["--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--timeout", "120"]
    command += ["--log-level", "warning", "--error-logfile", str(logfile)]
    with logfile.open("ab") as out:
        server = subprocess.Popen(
            command,
            env=server_env(db_url),
            cwd=ROOT,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return server


def wait_healthy(server: subprocess.Popen, port: int, logfile: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not become healthy (see {logfile})")


class Worker:
    """The Celery worker as production runs it (prefork pool), with one pool process: killing
    that process is a task's process dying (the main process starts another, and acks_late +
    reject_on_worker_lost give the message back at once); killing the whole process group is
    the worker's machine dying (a new incarnation is started, and the broker gives the messages
    back after the visibility timeout)."""

    def __init__(self, env: dict, queue: str, logdir: Path, supervisor: Supervisor) -> None:
        self.env = env
        self.queue = queue
        self.logdir = logdir
        self.supervisor = supervisor
        self.proc: subprocess.Popen | None = None
        self.incarnation = 0
        self.logfiles: list[Path] = []

    def start(self) -> None:
        """Start a new incarnation; it comes up on its own (wait_ready to wait for it)."""
        self.incarnation += 1
        logfile = self.logdir / f"celery-{self.incarnation}.log"
        self.logfiles.append(logfile)
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.faults_celery",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            "1",
            "-Q",
            self.queue,
            "-n",
            f"faults{self.incarnation}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "INFO",
            "--logfile",
            str(logfile),
        ]
        self.proc = self.supervisor.add(
            subprocess.Popen(
                command,
                env=self.env,
                cwd=ROOT,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def wait_ready(self, timeout: float = 90) -> None:
        logfile = self.logfiles[-1]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if logfile.exists() and " ready." in logfile.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"the Celery worker did not start (see {logfile})")

    def kill(self, dump_first: bool = False) -> tuple[int, int]:
        """kill -9 the worker, main and pool processes. With `dump_first` (the fault could not
        be aimed: the worker may be stuck), Celery's SIGUSR1 handler first writes the stacks
        to the worker's log. Returns (main pid, the log's length then)."""
        pid = self.proc.pid
        if dump_first:
            for target in [pid, *_children(pid)]:
                os.kill(target, signal.SIGUSR1)
            time.sleep(2)
        os.killpg(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        return pid, self.log_size()

    def kill_pool_process(self, dump_first: bool = False) -> tuple[int, int]:
        """kill -9 the pool process (the one running the task); wait until the main process has
        started another. Returns (pid killed, the log's length then)."""
        children = _children(self.proc.pid)
        if not children:
            raise RuntimeError("the Celery worker has no pool process")
        victim = children[0]
        if dump_first:
            os.kill(victim, signal.SIGUSR1)
            time.sleep(2)
        os.kill(victim, signal.SIGKILL)
        offset = self.log_size()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _children(self.proc.pid)
            if now and victim not in now:
                break
            time.sleep(0.05)
        return victim, offset

    def log_size(self) -> int:
        logfile = self.logfiles[-1]
        return logfile.stat().st_size if logfile.exists() else 0

    def held_tasks(self) -> list[str]:
        """The ids of the tasks the current incarnation received and has not finished (the one
        it runs, and any it holds for later: a retry's countdown)."""
        logfile = self.logfiles[-1]
        text = logfile.read_text(errors="replace") if logfile.exists() else ""
        running: dict[str, None] = {}  # insertion-ordered
        for task, event, rest in re.findall(
            r"Task [\w.]+\[([0-9a-f-]+)\] (received|succeeded|raised|retry)(.*)", text
        ):
            if "WorkerLostError" in rest:
                continue  # the kill we just made, not the task finishing
            running.pop(task, None)
            if event == "received":
                running[task] = None
        return list(running)

    def seen_later(self, task_id: str, incarnation: int, offset: int) -> bool:
        """Whether task `task_id` was received again (a redelivery) or finished after `offset`
        in the log of `incarnation`, or in a later incarnation's. A pool process's kill loses
        only the task it ran; the others the main process held (a retry's countdown) simply
        run later."""
        for number, logfile in enumerate(self.logfiles[incarnation - 1 :], start=incarnation):
            if not logfile.exists():
                continue
            text = logfile.read_bytes()[offset if number == incarnation else 0 :]
            if re.search(rf"\[{task_id}\] (received|succeeded)".encode(), text):
                return True
        return False

    def log_text(self) -> str:
        return "".join(f.read_text(errors="replace") for f in self.logfiles if f.exists())


class Broker:
    """Sends the tasks and reads the queue; Redis database of the run's own."""

    def __init__(self, url: str, queue: str) -> None:
        import redis
        from celery import Celery

        self.redis = redis.Redis.from_url(url)
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise SetupError(f"no Redis at {url}: {exc}") from exc
        self.queue = queue
        self.app = Celery("faults", broker=url)
        self.app.conf.broker_connection_retry_on_startup = True

    def send(self, name: str, **kwargs) -> str:
        return self.app.send_task(name, kwargs=kwargs, queue=self.queue).id

    def queued(self) -> int:
        return int(self.redis.llen(self.queue))

    def unacked(self) -> int:
        return int(self.redis.hlen("unacked"))

    def idle(self) -> bool:
        return self.queued() == 0 and self.unacked() == 0

    def cleanup(self) -> None:
        keys = [self.queue, "unacked", "unacked_index", "unacked_mutex"]
        # What the worker's remote control leaves (the run's database is its own).
        keys += ["_kombu.binding.celery.pidbox", "_kombu.binding_deadlines"]
        keys += [k for k in self.redis.scan_iter(f"*{self.queue}*")]
        self.redis.delete(*keys)
        self.app.close()


class Beat(threading.Thread):
    """Queues a drain and a push whenever the queue is empty, as the minutely beat would."""

    def __init__(self, broker: Broker, stop: threading.Event, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.broker = broker
        self.stop = stop
        self.interval = interval
        self.sent = 0
        self.paused = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if not self.paused.is_set() and self.broker.queued() == 0:
                    self.broker.send(DRAIN_TASK)
                    self.broker.send(PUSH_TASK)
                    self.sent += 2
            except Exception as exc:  # the broker hiccups: try again next tick
                log(f"beat: {exc}")
            self.stop.wait(self.interval)


# --- clients -------------------------------------------------------------------------------------


def client_run(port, key, bodies, done, out, pause: float, allowed) -> None:
    """Send each batch until it gets a 200, retrying the same bytes on any error or 5xx.
    A batch waits until its index is below `allowed` (raised by the fault schedule)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    conn = None
    stats = {
        "batches": 0,
        "attempts": 0,
        "retried_batches": 0,
        "errors": {},
        "answers": {},
        "gave_up": [],
        "bad": [],
    }
    for index, body in bodies:
        gate_deadline = time.monotonic() + 900
        while index >= allowed.value and time.monotonic() < gate_deadline:
            time.sleep(0.01)
        attempt = 0
        delay = 0.05
        started = time.monotonic()
        while True:
            attempt += 1
            stats["attempts"] += 1
            status = None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("POST", "/api/v1/events/batch", body, headers)
                response = conn.getresponse()
                data = response.read()
                status = response.status
                reason = f"HTTP {status}"
            except (http.client.HTTPException, OSError) as exc:
                reason = type(exc).__name__
                if conn is not None:
                    conn.close()
                conn = None
            if status == 200:
                answer = orjson.loads(data)
                for k in ("accepted", "duplicates", "quarantined", "conflicts", "rejected"):
                    stats["answers"][k] = stats["answers"].get(k, 0) + answer[k]
                break
            if status is not None and 400 <= status < 500 and status != 429:
                stats["bad"].append((index, status, data[:300].decode(errors="replace")))
                break
            stats["errors"][reason] = stats["errors"].get(reason, 0) + 1
            if attempt >= MAX_ATTEMPTS or time.monotonic() - started > BATCH_DEADLINE:
                stats["gave_up"].append(index)
                break
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        stats["batches"] += 1
        if attempt > 1:
            stats["retried_batches"] += 1
        with done.get_lock():
            done.value += 1
        if pause:
            time.sleep(pause)
    if conn is not None:
        conn.close()
    out.put(stats)


# --- injections ----------------------------------------------------------------------------------


@dataclass
class Injection:
    at: datetime
    offset: float  # seconds since the load started
    what: str
    pid: int
    detail: str
    during_load: bool
    hit: bool = True  # the fault landed where it was aimed


@dataclass
class Check:
    name: str
    ok: bool
    figures: str


@dataclass
class Report:
    injections: list[Injection] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def lines(self) -> list[str]:
        out = ["", "injected:"]
        for i in self.injections:
            out.append(
                f"  {i.at:%H:%M:%S.%f}"[:-3]
                + f" UTC  +{i.offset:6.1f}s  {i.what:<34} pid {i.pid:<7}"
                + f" {'during load' if i.during_load else 'after load '}  {i.detail}"
            )
        out += ["", "checked:"]
        for c in self.checks:
            out.append(f"  {'PASS' if c.ok else 'FAIL'}  {c.name:<44} {c.figures}")
        out.append("")
        out.append(f"result: {'PASS' if self.ok else 'FAIL'}")
        return out


# A drain in the middle of a batch: its transaction holds a rollup slot lock and has already
# claimed inbox rows (DELETE ... RETURNING: it holds RowExclusiveLock on the inbox), not committed.
MID_DRAIN_SQL = """
SELECT l.pid, extract(epoch FROM now() - a.xact_start) * 1000,
       EXISTS (SELECT 1 FROM pg_locks w WHERE w.pid = l.pid AND w.locktype = 'relation'
               AND w.relation = 'metering_rolluphourly'::regclass
               AND w.mode = 'RowExclusiveLock')
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND ((l.classid::bigint << 32) | l.objid::bigint) BETWEEN %s AND %s
  AND EXISTS (SELECT 1 FROM pg_locks c WHERE c.pid = l.pid AND c.locktype = 'relation'
              AND c.relation = 'metering_rollupinbox'::regclass AND c.mode = 'RowExclusiveLock')
LIMIT 1
"""

IN_FLIGHT_SQL = """
SELECT 1 FROM billing_pushledgerentry
WHERE status = 'pending' AND first_sent_at IS NOT NULL LIMIT 1
"""

IN_FLIGHT_DETAIL_SQL = """
SELECT count(*),
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM billing_simulatedusagerecord r WHERE r.identifier = l.identifier))
FROM billing_pushledgerentry l
WHERE l.status = 'pending' AND l.first_sent_at IS NOT NULL
"""


# A gunicorn worker's database session that has just committed (the ingest transaction): its
# answer is being written, not yet sent.
JUST_COMMITTED_SQL = """
SELECT client_port FROM pg_stat_activity
WHERE backend_type = 'client backend' AND state = 'idle' AND query = 'COMMIT'
  AND state_change > clock_timestamp() - interval '10 milliseconds'
  AND pid <> pg_backend_pid()
"""


def _local_ports(pid: int) -> set[int]:
    """The local TCP ports of process `pid`'s sockets (its database connection among them)."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    except OSError:
        return set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[9]) in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _backend_gone(conn, pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
        if row is None:
            return True
        time.sleep(0.1)
    return False


class Faults:
    def __init__(
        self,
        *,
        report,
        cluster,
        server,
        worker,
        broker,
        db_url,
        done,
        total,
        t0,
        rng,
        push_aim,
        beat,
        allowed,
    ):
        self.beat = beat
        self.allowed = allowed
        self.report = report
        self.cluster = cluster
        self.server = server
        self.worker = worker
        self.broker = broker
        self.db_url = db_url
        self.done = done
        self.total = total
        self.t0 = t0
        self.rng = rng
        # (what, ids of the tasks the killed process held, the incarnation, its log's length)
        self.killed_tasks: list[tuple[str, list[str], int, int]] = []
        self.push_aim = push_aim

    def record(self, what: str, pid: int, detail: str, hit: bool = True) -> None:
        injection = Injection(
            at=datetime.now(UTC),
            offset=time.monotonic() - self.t0,
            what=what,
            pid=pid,
            detail=detail,
            during_load=self.done.value < self.total,
            hit=hit,
        )
        self.report.injections.append(injection)
        log(f"injected {what} (pid {pid}): {detail}")

    def wait_progress(self, share: float, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.done.value < share * self.total and time.monotonic() < deadline:
            time.sleep(0.05)

    def kill_gunicorn_worker(self, after_commit: float = 0.0) -> None:
        """Kill a gunicorn worker; with `after_commit` seconds, first wait (that long at most)
        for a worker whose ingest transaction has just committed and whose answer is not sent
        yet: its client sees an error for a batch that is stored, and retries it."""
        workers = sorted(_children(self.server.pid))
        if not workers:
            self.record("kill -9 gunicorn worker", 0, "no worker found", hit=False)
            return
        victim, aimed = None, ""
        if after_commit:
            deadline = time.monotonic() + after_commit
            ports: dict[int, int] = {}
            refreshed = 0.0
            with psycopg.connect(self.db_url, autocommit=True) as conn:
                # Stop aiming before the clients run out of batches they may send.
                while (
                    victim is None
                    and time.monotonic() < deadline
                    and self.done.value < self.allowed.value - 1
                ):
                    if time.monotonic() - refreshed > 1:
                        ports = {port: w for w in workers for port in _local_ports(w)}
                        refreshed = time.monotonic()
                    for (port,) in conn.execute(JUST_COMMITTED_SQL).fetchall():
                        if port in ports:
                            victim = ports[port]
                            break
                    else:
                        time.sleep(0.002)
            aimed = (
                "right after its ingest transaction committed; "
                if victim
                else f"no commit caught in {after_commit:.0f}s; "
            )
        victim = victim or self.rng.choice(workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        respawned: list[int] = []
        while time.monotonic() < deadline:
            now = _children(self.server.pid)
            respawned = sorted(set(now) - set(workers))
            if victim not in now and len(now) >= len(workers) and respawned:
                break
            time.sleep(0.1)
        self.record(
            "kill -9 gunicorn worker",
            victim,
            f"{aimed}master {self.server.pid} respawned it as {respawned or 'NOTHING'}",
            hit=bool(respawned),
        )

    def kill_gunicorn_worker_after_commit(self) -> None:
        self.kill_gunicorn_worker(after_commit=20.0)

    def restart_postgres(self) -> None:
        old, new, seconds = self.cluster.restart_immediate()
        self.record(
            "pg_ctl restart -m immediate",
            old,
            f"postmaster {old} -> {new}, accepting again after {seconds:.1f}s",
        )

    def kill_worker_mid_drain(self, timeout: float = 300) -> None:
        low = ROLLUP_LOCK_KEY + 1
        high = ROLLUP_LOCK_KEY + ACCOUNT_SLOTS
        self.broker.send(DRAIN_TASK)
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            row = None
            while time.monotonic() < deadline:
                row = conn.execute(MID_DRAIN_SQL, [low, high]).fetchone()
                if row is not None:
                    break
                time.sleep(0.005)
            # first: the moment found is gone in milliseconds
            pid, offset = self.worker.kill_pool_process(dump_first=row is None)
            tasks = self.worker.held_tasks()
            incarnation = self.worker.incarnation
            if row is None:
                detail, hit = "no drain transaction seen before the timeout", False
            else:
                gone = _backend_gone(conn, row[0])
                inbox = conn.execute("SELECT count(*) FROM metering_rollupinbox").fetchone()[0]
                detail = (
                    f"drain transaction {row[1]:.0f} ms old had claimed inbox rows"
                    f"{' and written rollups' if row[2] else ''}, uncommitted (backend {row[0]}, "
                    f"{'rolled back' if gone else 'STILL THERE'}); inbox {inbox:,} after"
                )
                hit = gone
        self.killed_tasks.append(("drain", tasks, incarnation, offset))
        self.record(DRAIN_KILL, pid, f"{detail}; held {len(tasks)}", hit=hit)

    def pause_beat(self) -> None:
        self.beat.paused.set()

    def kill_worker_mid_push(self, timeout: float = 300) -> None:
        """Kill while a chunk is attempted and unanswered; for up to `push_aim` seconds from the
        first chunk seen so, wait for the worst moment: the provider has recorded the chunk, the
        ledger has not its answer yet. The beat was paused meanwhile, so this push has a backlog to send."""
        self.broker.send(PUSH_TASK)
        deadline = time.monotonic() + timeout
        aim_until = None  # counted from the first chunk seen in flight
        seen = False
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                if conn.execute(IN_FLIGHT_SQL).fetchone() is None:
                    time.sleep(0.005)
                    continue
                seen = True
                aim_until = aim_until or time.monotonic() + self.push_aim
                if time.monotonic() > aim_until:
                    break
                in_flight, recorded = conn.execute(IN_FLIGHT_DETAIL_SQL).fetchone()
                if in_flight and recorded:
                    break
            # first: the moment found is gone in milliseconds
            pid, offset = self.worker.kill(dump_first=not seen)
            tasks = self.worker.held_tasks()
            incarnation = self.worker.incarnation
            time.sleep(0.5)  # the backend notices and rolls back whatever was open
            in_flight, recorded = conn.execute(IN_FLIGHT_DETAIL_SQL).fetchone()
        if seen:
            detail = (
                f"{in_flight:,} entries attempted and unanswered, "
                f"{recorded:,} of them already recorded by the provider"
            )
        else:
            detail = "no push between attempt and answer seen before the timeout"
        self.beat.paused.clear()
        self.killed_tasks.append(("push", tasks, incarnation, offset))
        self.record(
            PUSH_KILL,
            pid,
            f"{detail}; held {len(tasks)}",
            hit=seen and in_flight > 0,
        )
        self.worker.start()


# --- settling and checks -------------------------------------------------------------------------


def backlog(db_url: str) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        rollup = conn.execute("SELECT count(*) FROM metering_rollupinbox").fetchone()[0]
        # Events waiting for the push: the rolled-up feed (or, in older schemas, the push inbox).
        push = 0
        for table in ("metering_rolledupevent", "billing_pushinbox"):
            if conn.execute("SELECT to_regclass(%s)", [table]).fetchone()[0]:
                push += conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        pending = conn.execute(
            "SELECT count(*) FROM billing_pushledgerentry WHERE status = 'pending'"
        ).fetchone()[0]
    return {"rollup_inbox": rollup, "push_inbox": push, "ledger_pending": pending}


def wait_idle(broker: Broker, deadline: float) -> bool:
    quiet_since = None
    while time.monotonic() < deadline:
        if broker.idle():
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= 1.0:
                return True
        else:
            quiet_since = None
        time.sleep(0.2)
    return False


def settle(broker: Broker, db_url: str, timeout: float) -> tuple[bool, dict, int]:
    """Queue drains and pushes until the worker is idle and nothing is left to do."""
    deadline = time.monotonic() + timeout
    rounds = 0
    left: dict = {}
    while time.monotonic() < deadline:
        if not wait_idle(broker, deadline):
            break
        left = backlog(db_url)
        if rounds and not any(left.values()):
            return True, left, rounds
        broker.send(DRAIN_TASK)
        broker.send(PUSH_TASK)
        rounds += 1
    return False, left, rounds


ROLLUP_TOTALS_SQL = """
SELECT m.code,
       (SELECT count(e.value) FROM metering_usageevent e WHERE e.meter_id = m.id),
       (SELECT coalesce(sum(e.value), 0) FROM metering_usageevent e WHERE e.meter_id = m.id),
       (SELECT coalesce(sum(h.count), 0) FROM metering_rolluphourly h
         WHERE h.meter_id = m.id AND h.dim_key = ''),
       (SELECT coalesce(sum(h.sum), 0) FROM metering_rolluphourly h
         WHERE h.meter_id = m.id AND h.dim_key = ''),
       (SELECT coalesce(sum(d.count), 0) FROM metering_rollupdaily d
         WHERE d.meter_id = m.id AND d.dim_key = ''),
       (SELECT coalesce(sum(d.sum), 0) FROM metering_rollupdaily d
         WHERE d.meter_id = m.id AND d.dim_key = '')
FROM metering_meter m ORDER BY m.code
"""

LEDGER_SQL = {
    "statuses": "SELECT status, count(*) FROM billing_pushledgerentry GROUP BY status",
    "eligible": """
        SELECT count(*) FROM metering_usageevent e JOIN metering_meter m ON m.id = e.meter_id
        WHERE m.aggregation IN ('count', 'sum') AND e.value IS NOT NULL AND e.value <> 0""",
    "eligible_without_entry": """
        SELECT count(*) FROM metering_usageevent e JOIN metering_meter m ON m.id = e.meter_id
        WHERE m.aggregation IN ('count', 'sum') AND e.value IS NOT NULL AND e.value <> 0
          AND NOT EXISTS (SELECT 1 FROM billing_pushledgerentry l
                          WHERE l.event_id = e.id AND l.kind = 'event')""",
    "event_entries": "SELECT count(*) FROM billing_pushledgerentry WHERE kind = 'event'",
    "entries_per_event_max": """
        SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM billing_pushledgerentry
        WHERE kind = 'event' GROUP BY event_id) x""",
    "records": "SELECT count(*) FROM billing_simulatedusagerecord",
    "identifiers_recorded_twice": """
        SELECT count(*) FROM (SELECT identifier FROM billing_simulatedusagerecord
                              GROUP BY identifier HAVING count(*) > 1) x""",
    "done_not_once": """
        SELECT count(*) FROM billing_pushledgerentry l
        WHERE l.status IN ('sent', 'acknowledged')
          AND (SELECT count(*) FROM billing_simulatedusagerecord r
               WHERE r.identifier = l.identifier AND r.value = l.value) <> 1""",
    "records_without_entry": """
        SELECT count(*) FROM billing_simulatedusagerecord r
        WHERE NOT EXISTS (SELECT 1 FROM billing_pushledgerentry l
                          WHERE l.identifier = r.identifier)""",
    # Entries that must never reach the provider: too old, rejected, failed, and superseded
    # entries never attempted.
    "unsendable_but_recorded": """
        SELECT count(*) FROM billing_pushledgerentry l
        WHERE (l.status IN ('too_old', 'rejected', 'failed')
               OR (l.status = 'superseded' AND l.first_sent_at IS NULL))
          AND EXISTS (SELECT 1 FROM billing_simulatedusagerecord r
                      WHERE r.identifier = l.identifier)""",
    # SUPERSEDED_NOTE: a period-to-date entry attempted by a worker that died before recording
    # the answer, then superseded by a newer value before a resend: the provider may hold it
    # (once at most, see identifiers_recorded_twice); the ledger keeps it as `superseded` with
    # first_sent_at set and no answer. Harmless for a `last` meter (the newer value, sent
    # later with a later timestamp, is the one that counts), but the ledger's status does not
    # say the provider has it.
    "superseded_after_attempt_recorded": """
        SELECT count(*) FROM billing_pushledgerentry l
        WHERE l.status = 'superseded' AND l.first_sent_at IS NOT NULL
          AND EXISTS (SELECT 1 FROM billing_simulatedusagerecord r
                      WHERE r.identifier = l.identifier)""",
}

# Max, unique_count and latest meters reach the provider as period-to-date values on a `last`
# meter: per (account, meter, period) the provider's newest record must carry the ledger's
# newest value, and that entry must be done.
GAUGE_SQL = """
WITH keyed AS (
    SELECT l.account_id, l.meter_id, l.period_start, l.seq, l.value, l.status,
           r.timestamp AS recorded_ts, r.value AS recorded_value
    FROM billing_pushledgerentry l
    LEFT JOIN billing_simulatedusagerecord r ON r.identifier = l.identifier AND NOT r.dropped
    WHERE l.kind = 'period_to_date'
), newest_entry AS (
    SELECT DISTINCT ON (account_id, meter_id, period_start) account_id, meter_id, period_start,
           value, status
    FROM keyed ORDER BY account_id, meter_id, period_start, seq DESC
), newest_record AS (
    SELECT DISTINCT ON (account_id, meter_id, period_start) account_id, meter_id, period_start,
           recorded_value
    FROM keyed WHERE recorded_ts IS NOT NULL
    ORDER BY account_id, meter_id, period_start, recorded_ts DESC, seq DESC
)
SELECT count(*),
       count(*) FILTER (WHERE e.status NOT IN ('sent', 'acknowledged')
                        OR r.recorded_value IS DISTINCT FROM e.value)
FROM newest_entry e LEFT JOIN newest_record r USING (account_id, meter_id, period_start)
"""

PROVIDER_TOTALS_SQL = """
SELECT m.code,
       (SELECT coalesce(sum(CASE WHEN m.aggregation = 'count' THEN 1 ELSE e.value END), 0)
          FROM metering_usageevent e WHERE e.meter_id = m.id AND e.value IS NOT NULL),
       (SELECT coalesce(sum(r.value), 0) FROM billing_simulatedusagerecord r
          WHERE r.event_name = 'mo_' || m.code AND NOT r.dropped)
FROM metering_meter m WHERE m.aggregation IN ('count', 'sum') ORDER BY m.code
"""


def check_stored(db_url: str, run_id: str, events: int, client_stats: dict) -> list[Check]:
    with psycopg.connect(db_url) as conn:
        rows, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (account_id, transaction_id)) FROM metering_usageevent"
        ).fetchone()
        stored_ids = {r[0] for r in conn.execute("SELECT transaction_id FROM metering_usageevent")}
    sent_ids = {f"{run_id}-{i}" for i in range(events)}
    missing = len(sent_ids - stored_ids)
    extra = len(stored_ids - sent_ids)
    answers = client_stats["answers"]
    bad_items = sum(answers.get(k, 0) for k in ("quarantined", "conflicts", "rejected"))
    return [
        Check(
            "stored == sent (no loss, no duplicate)",
            rows == distinct == len(sent_ids) and missing == 0 and extra == 0,
            f"sent {len(sent_ids):,} distinct ids; stored {rows:,} rows, {distinct:,} distinct; "
            f"missing {missing}, extra {extra}",
        ),
        Check(
            "every batch answered 200, every item ok",
            not client_stats["gave_up"] and not client_stats["bad"] and bad_items == 0,
            f"{client_stats['batches']:,} batches, {client_stats['attempts']:,} requests, "
            f"{client_stats['retried_batches']} retried; gave up {len(client_stats['gave_up'])}, "
            f"4xx {len(client_stats['bad'])}; answers {answers}; errors seen "
            f"{client_stats['errors']}",
        ),
    ]


def check_rollups(db_url: str, self_check_done: bool) -> list[Check]:
    """The nightly self-check's verdict (run by the worker as its task, which records what it
    found before repairing it), and the per-meter totals."""
    with psycopg.connect(db_url) as conn:
        found = conn.execute(
            "SELECT status, buckets_checked, drifted, details FROM metering_rollupcheck "
            "WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1"
        ).fetchone()
        pending = conn.execute("SELECT count(*) FROM metering_rollupinbox").fetchone()[0]
    checks = []
    if not self_check_done or found is None:
        checks.append(Check("rollup self-check: no drift", False, "the self-check did not run"))
    else:
        status, checked, drifted, details = found
        examples = (details or {}).get("drifted", [])[:3]
        checks.append(
            Check(
                "rollup self-check: no drift",
                drifted == 0 and pending == 0 and checked > 0 and status == "clean",
                f"{checked:,} buckets checked, {drifted} drifted, inbox {pending}, status {status}"
                + (f", e.g. {examples}" if examples else ""),
            )
        )
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(ROLLUP_TOTALS_SQL).fetchall()
    wrong = [r[0] for r in rows if not (r[1] == r[3] == r[5] and r[2] == r[4] == r[6])]
    checks.append(
        Check(
            "rollup totals == raw totals, per meter",
            not wrong,
            "; ".join(f"{r[0]} count {r[1]:,}/{r[3]:,}/{r[5]:,}" for r in rows)
            + " (raw/hourly/daily)"
            + (f"; WRONG: {wrong}" if wrong else ""),
        )
    )
    return checks


def check_ledger(db_url: str) -> list[Check]:
    with psycopg.connect(db_url) as conn:
        f = {}
        for name, sql in LEDGER_SQL.items():
            if name == "statuses":
                f[name] = dict(conn.execute(sql).fetchall())
            else:
                f[name] = conn.execute(sql).fetchone()[0]
        totals = conn.execute(PROVIDER_TOTALS_SQL).fetchall()
        gauge_keys, gauge_wrong = conn.execute(GAUGE_SQL).fetchone()
    statuses = f["statuses"]
    done = statuses.get("sent", 0) + statuses.get("acknowledged", 0)
    wrong_totals = [r[0] for r in totals if r[1] != r[2]]
    return [
        Check(
            "ledger: nothing pending or failed",
            statuses.get("pending", 0) == 0 and statuses.get("failed", 0) == 0,
            f"entries by status {statuses}",
        ),
        Check(
            "ledger: one entry per count/sum event",
            f["eligible_without_entry"] == 0
            and f["event_entries"] == f["eligible"]
            and f["entries_per_event_max"] <= 1,
            f"{f['eligible']:,} events, {f['event_entries']:,} event entries, "
            f"{f['eligible_without_entry']} events without one",
        ),
        Check(
            "provider: every sent entry recorded exactly once",
            f["done_not_once"] == 0
            and f["identifiers_recorded_twice"] == 0
            and f["records_without_entry"] == 0
            and f["unsendable_but_recorded"] == 0,
            f"{done:,} sent/acknowledged entries, {f['records']:,} provider records; "
            f"sent entries not recorded exactly once {f['done_not_once']}, identifiers "
            f"recorded twice {f['identifiers_recorded_twice']}, records without an entry "
            f"{f['records_without_entry']}, unsendable but recorded "
            f"{f['unsendable_but_recorded']}; superseded after an unanswered attempt and "
            f"recorded: {f['superseded_after_attempt_recorded']}",
        ),
        Check(
            "provider totals == raw totals, count/sum meters",
            not wrong_totals,
            "; ".join(f"{r[0]} {r[1]:,} vs {r[2]:,}" for r in totals),
        ),
        Check(
            "provider's last value == newest ledger value, max/latest/unique meters",
            gauge_wrong == 0,
            f"{gauge_keys:,} (account, meter, period) keys, {gauge_wrong} differ",
        ),
    ]


def merge_stats(results: list[dict]) -> dict:
    total = {
        "batches": 0,
        "attempts": 0,
        "retried_batches": 0,
        "errors": {},
        "answers": {},
        "gave_up": [],
        "bad": [],
    }
    for r in results:
        for k in ("batches", "attempts", "retried_batches"):
            total[k] += r[k]
        for k in ("errors", "answers"):
            for name, n in r[k].items():
                total[k][name] = total[k].get(name, 0) + n
        total["gave_up"] += r["gave_up"]
        total["bad"] += r["bad"]
    return total


# --- the run -------------------------------------------------------------------------------------


def run_faults(
    *,
    events: int = 200_000,
    clients: int = 4,
    seed: int = 7,
    batch: int = 500,
    workers: int = 2,
    accounts: int = 50,
    rollup_batch: int = 500,
    load_seconds: float = 0.0,
    redis_url: str = DEFAULT_REDIS,
    settle_timeout: float = 600.0,
    visibility_timeout: int = 10,
    push_aim_seconds: float = 30.0,
) -> Report:
    """One fault run (see the module docstring); returns what was injected and checked."""
    report = Report()
    supervisor = Supervisor()
    atexit.register(supervisor.cleanup)
    rng = random.Random(seed)
    base = ROOT / ".data" / f"faults-{os.getpid()}-{int(time.time())}"
    run_started = time.monotonic()
    try:
        broker = Broker(redis_url, queue=f"meterops-faults-{os.getpid()}")
        supervisor.redis_cleanup = broker.cleanup
        broker.cleanup()  # nothing left from an earlier run of this pid
        cluster = PrivateCluster(base / "pg")
        supervisor.cluster = cluster
        base.mkdir(parents=True)
        log(f"private PostgreSQL cluster on 127.0.0.1:{cluster.port} in {cluster.base}")
        cluster.start()
        db_url, maintenance = cluster.url("meterops_faults"), cluster.url("postgres")
        options = SimpleNamespace(
            events=events, batch=batch, accounts=accounts, seed=seed, clients=clients
        )
        recreate_database("meterops_faults", maintenance)
        env = server_env(db_url)
        env.update(
            CELERY_BROKER_URL=redis_url,
            BILLING_PROVIDER="simulated",
            ROLLUP_BATCH_SIZE=str(rollup_batch),
            LOG_LEVEL="INFO",  # the worker's log tells which task ran, was retried, redelivered
            FAULTS_VISIBILITY_TIMEOUT=str(visibility_timeout),
        )
        port = free_port()
        logdir = base / "logs"
        logdir.mkdir()
        # The worker and gunicorn boot while the database is migrated (they touch it only
        # when work arrives).
        worker = Worker(env, broker.queue, logdir, supervisor)
        worker.start()
        server = supervisor.add(start_gunicorn(db_url, workers, port, logdir / "gunicorn.log"))
        key = prepare_database(db_url, accounts)
        run_id = f"f{seed}"
        bodies = make_bodies(options, run_id)
        log(f"{events:,} events in {len(bodies)} batches of {batch}, {clients} clients")
        wait_healthy(server, port, logdir / "gunicorn.log")
        worker.wait_ready()

        ctx = multiprocessing.get_context("fork")
        done = ctx.Value("i", 0)
        queue = ctx.Queue()
        indexed = list(enumerate(bodies))
        shares = [indexed[i::clients] for i in range(clients)]
        pause = load_seconds / max(1, len(shares[0])) if load_seconds else 0.0
        allowed = ctx.Value("i", 0)
        beat = Beat(broker, supervisor.stop_threads)
        t0 = time.monotonic()
        setup_seconds = t0 - run_started
        for share in shares:
            proc = ctx.Process(
                target=client_run,
                args=(port, key, share, done, queue, pause, allowed),
            )
            supervisor.clients.append(proc)
            proc.start()
        beat.start()

        faults = Faults(
            report=report,
            cluster=cluster,
            server=server,
            worker=worker,
            broker=broker,
            db_url=db_url,
            done=done,
            total=len(bodies),
            t0=t0,
            rng=rng,
            push_aim=push_aim_seconds,
            beat=beat,
            allowed=allowed,
        )
        plan = [
            (0.10, faults.kill_gunicorn_worker),
            (0.25, faults.restart_postgres),
            (0.40, faults.kill_worker_mid_drain),
            (0.45, faults.pause_beat),  # a push backlog builds up: the next push sends big chunks
            (0.60, faults.kill_worker_mid_push),
            (0.80, faults.kill_gunicorn_worker_after_commit),
        ]
        for share, inject in plan:
            allowed.value = min(len(bodies), int((share + LEAD_SHARE) * len(bodies)))
            faults.wait_progress(share)
            inject()
        allowed.value = len(bodies)

        results = [queue.get(timeout=BATCH_DEADLINE * 4) for _ in shares]
        for proc in supervisor.clients:
            proc.join(timeout=30)
        load_seconds_taken = time.monotonic() - t0
        log(f"load done in {load_seconds_taken:.1f}s; settling")
        supervisor.stop_threads.set()
        beat.join(timeout=5)
        settled, left, rounds = settle(broker, db_url, settle_timeout)
        settle_seconds = time.monotonic() - t0 - load_seconds_taken
        log(f"settled: {settled} after {rounds} rounds, {settle_seconds:.1f}s; left {left}")

        for what, task_ids, incarnation, offset in faults.killed_tasks:
            again = [t for t in task_ids if worker.seen_later(t, incarnation, offset)]
            report.checks.append(
                Check(
                    f"no task held by the process killed mid {what} lost",
                    bool(task_ids) and len(again) == len(task_ids),
                    f"{len(again)} of {len(task_ids)} received again or finished afterwards"
                    + (f" ({', '.join(t[:8] for t in task_ids)})" if task_ids else ""),
                )
            )
        for injection in report.injections:
            report.checks.append(
                Check(
                    f"injected: {injection.what}",
                    injection.hit and injection.during_load,
                    f"at +{injection.offset:.1f}s, {injection.detail[:90]}",
                )
            )
        report.checks.append(
            Check(
                "drained and pushed everything",
                settled,
                f"{rounds} rounds after the load, {settle_seconds:.1f}s; left {left}",
            )
        )
        # The nightly self-check, run now by the worker (over the last 4 days: the events span 2).
        broker.send(SELF_CHECK_TASK, days=4)
        self_check_done = wait_idle(broker, time.monotonic() + settle_timeout)
        # Processes are left running (idle) until the checks are done; cleanup kills them.
        client_stats = merge_stats(results)
        checks_started = time.monotonic()
        report.checks += check_stored(db_url, run_id, events, client_stats)
        report.checks += check_rollups(db_url, self_check_done)
        report.checks += check_ledger(db_url)
        worker_log = worker.log_text()
        report.figures = {
            "setup_seconds": setup_seconds,
            "check_seconds": time.monotonic() - checks_started,
            "events": events,
            "batches": len(bodies),
            "load_seconds": load_seconds_taken,
            "events_per_second": events / load_seconds_taken,
            "settle_seconds": settle_seconds,
            "tasks_succeeded": worker_log.count(" succeeded in "),
            "tasks_retried": len(re.findall(r"\] retry: ", worker_log)),
            "tasks_failed": len(re.findall(r"\] raised unexpected", worker_log)),
            "worker_lost": worker_log.count("Task handler raised error: WorkerLostError"),
        }
    finally:
        supervisor.cleanup()
        atexit.unregister(supervisor.cleanup)
        if report.ok:
            shutil.rmtree(base, ignore_errors=True)
        elif base.exists():
            log(f"logs kept in {base}")
    return report


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events to send (200,000)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (4)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch", type=int, default=500, help="events per request (500)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (2)")
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument(
        "--rollup-batch", type=int, default=500, help="ROLLUP_BATCH_SIZE of the worker (500)"
    )
    parser.add_argument(
        "--load-seconds", type=float, default=0.0, help="spread the load over at least this long"
    )
    parser.add_argument("--redis", default=DEFAULT_REDIS, help=f"broker ({DEFAULT_REDIS})")
    parser.add_argument(
        "--visibility-timeout", type=int, default=10, help="broker visibility timeout, s (10)"
    )
    parser.add_argument(
        "--push-aim",
        type=float,
        default=30.0,
        help="seconds to wait for a push chunk recorded by the provider and not yet answered (30)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # SIGTERM/SIGINT unwind through run_faults' finally, which stops everything it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        report = run_faults(
            events=args.events,
            clients=args.clients,
            seed=args.seed,
            batch=args.batch,
            workers=args.workers,
            accounts=args.accounts,
            rollup_batch=args.rollup_batch,
            load_seconds=args.load_seconds,
            redis_url=args.redis,
            visibility_timeout=args.visibility_timeout,
            push_aim_seconds=args.push_aim,
        )
    except SetupError as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        sys.exit(2)
    for line in report.lines():
        print(line)
    f = report.figures
    if f:
        print(
            f"load: {f['events']:,} events in {f['batches']} batches, {f['load_seconds']:.1f}s "
            f"({f['events_per_second']:,.0f} events/s with the faults); settled in "
            f"{f['settle_seconds']:.1f}s (setup {f['setup_seconds']:.1f}s, checks "
            f"{f['check_seconds']:.1f}s); worker tasks: {f['tasks_succeeded']} succeeded, "
            f"{f['tasks_retried']} retried, {f['tasks_failed']} failed, {f['worker_lost']} lost "
            "with their process"
        )
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
