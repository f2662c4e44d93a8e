"""Rota's key layout in etcd: every key is built here, under one root. docs/keys.md describes it."""

ROOT = b"/rota/"

#: The leader key: {"name", "addr"} under the leader's lease; its create revision is the fencing token.
LEADER = ROOT + b"leader"

#: Written (fenced) by a leader that lost its lease, to learn whether it still holds authority.
LEADER_CHECK = ROOT + b"leader-check"

#: The leader's write order: "<term>/<sequence>" of its latest state write, each write checking it is
#: not older (scheduler/store.py), so a write delayed in a frozen etcd member cannot land late.
WRITE_ORDER = ROOT + b"write-order"

#: Read, never written, by health checks: any answer from etcd's KV service will do.
HEALTH = ROOT + b"health"

#: One persistent key per master that ever joined: {"name", "addr"}.
MASTERS = ROOT + b"masters/"

#: One key per live executor, under that executor's lease.
EXECUTORS = ROOT + b"executors/"

#: One record per job, the commit marker of its submission.
JOBS = ROOT + b"jobs/"

#: A job's spec, in parts, written before its record.
JOBSPECS = ROOT + b"jobspec/"

#: One key per task whose state changed since submission.
TASKS = ROOT + b"tasks/"

#: A task's last checkpoint (the task SDK): the blob its current attempt saved, read by the next.
CHECKPOINTS = ROOT + b"checkpoints/"

#: Where a task's named port listens now (its current attempt published it): <job>/<task>.<port>.
ENDPOINTS = ROOT + b"endpoints/"

#: A job's barriers (the task SDK): who arrived, whether released.
BARRIERS = ROOT + b"barriers/"

#: One record per schedule (a job file with ``schedule``): its spec, whether paused, its last fire.
SCHEDULES = ROOT + b"schedules/"

#: One record per API token: its role, name and the SHA-256 of its secret (never the secret).
TOKENS = ROOT + b"tokens/"

#: {"tokens": true} once a master started with token checks: masters without them then refuse to start.
AUTH = ROOT + b"auth"


def schedule(schedule_id: str) -> bytes:
    return SCHEDULES + schedule_id.encode()


def master(name: str) -> bytes:
    return MASTERS + name.encode()


def executor(executor_id: str) -> bytes:
    return EXECUTORS + executor_id.encode()


def executor_id(key: bytes) -> str:
    """The executor id an EXECUTORS key names."""
    return key[len(EXECUTORS) :].decode()


def job(job_id: str) -> bytes:
    return JOBS + job_id.encode()


def job_id(key: bytes) -> str:
    """The job id a JOBS key names."""
    return key[len(JOBS) :].decode()


def job_spec(job_id: str, part: int) -> bytes:
    return JOBSPECS + f"{job_id}/{part:05d}".encode()


def job_specs(job_id: str) -> bytes:
    """The prefix of every spec part of one job."""
    return JOBSPECS + f"{job_id}/".encode()


def spec_job_id(key: bytes) -> str:
    """The job id a JOBSPECS key belongs to."""
    return key[len(JOBSPECS) :].decode().rsplit("/", 1)[0]


def job_tasks(job_id: str) -> bytes:
    """The prefix of every task key of one job."""
    return TASKS + f"{job_id}/".encode()


def task(job_id: str, index: int) -> bytes:
    return TASKS + f"{job_id}/{index:08d}".encode()


def task_of(key: bytes) -> tuple[str, int]:
    """(job id, task index) of a TASKS key."""
    job_id, _, index = key[len(TASKS) :].decode().rpartition("/")
    return job_id, int(index)


def checkpoint(job_id: str, index: int) -> bytes:
    return CHECKPOINTS + f"{job_id}/{index:08d}".encode()


def job_checkpoints(job_id: str) -> bytes:
    """The prefix of every checkpoint of one job."""
    return CHECKPOINTS + f"{job_id}/".encode()


def endpoint(job_id: str, name: str) -> bytes:
    return ENDPOINTS + f"{job_id}/{name}".encode()


def job_endpoints(job_id: str) -> bytes:
    """The prefix of every endpoint of one job."""
    return ENDPOINTS + f"{job_id}/".encode()


def endpoint_of(key: bytes) -> tuple[str, str]:
    """(job id, endpoint name) of an ENDPOINTS key (a job id has no '/')."""
    job_id, _, name = key[len(ENDPOINTS) :].decode().partition("/")
    return job_id, name


def barrier(job_id: str, name: str) -> bytes:
    return BARRIERS + f"{job_id}/{name}".encode()


def job_barriers(job_id: str) -> bytes:
    """The prefix of every barrier of one job."""
    return BARRIERS + f"{job_id}/".encode()


def barrier_of(key: bytes) -> tuple[str, str]:
    """(job id, barrier name) of a BARRIERS key."""
    job_id, _, name = key[len(BARRIERS) :].decode().rpartition("/")
    return job_id, name


def token(token_id: str) -> bytes:
    return TOKENS + token_id.encode()


def token_id(key: bytes) -> str:
    """The token id a TOKENS key names."""
    return key[len(TOKENS) :].decode()
