"""Who may do what: the roles a token carries and the calls each one allows.

Every gRPC method and HTTP route is named here with the permission it needs; a method missing from
the table is refused (a new call must be placed in the model before anyone can use it).
"""

from __future__ import annotations

ADMIN = "admin"
SUBMIT = "submit"
READ = "read"
EXECUTOR = "executor"
ROLES = (ADMIN, SUBMIT, READ, EXECUTOR)

#: What a call needs. OPEN calls carry nothing secret (a master's name and its leader, its lease
#: status) and are what masters and executors use to find each other before they hold a token.
OPEN = "open"
READ_JOBS = "read"
SUBMIT_JOBS = "submit"
CANCEL_JOBS = "cancel"
OPERATE = "operate"
ATTACH = "attach"
MANAGE_TOKENS = "tokens"
#: Listing, adding and removing masters' etcd members (``master-client member``).
MANAGE_MEMBERS = "members"
WHO_AM_I = "whoami"
#: Reading the gRPC schema (server reflection): public in protos/rota.proto, so any token will do.
DESCRIBE = "describe"

_GRANTS: dict[str, frozenset[str]] = {
    ADMIN: frozenset(
        {
            READ_JOBS,
            SUBMIT_JOBS,
            CANCEL_JOBS,
            OPERATE,
            ATTACH,
            MANAGE_TOKENS,
            MANAGE_MEMBERS,
            WHO_AM_I,
            DESCRIBE,
        }
    ),
    SUBMIT: frozenset({READ_JOBS, SUBMIT_JOBS, CANCEL_JOBS, WHO_AM_I, DESCRIBE}),
    READ: frozenset({READ_JOBS, WHO_AM_I, DESCRIBE}),
    EXECUTOR: frozenset({ATTACH, WHO_AM_I, DESCRIBE}),
}

#: gRPC methods of the Master and Executor services, by name.
METHODS: dict[str, str] = {
    "GetMasterInfo": OPEN,
    "LeaseStatus": OPEN,
    "FollowLeader": OPEN,
    "GetClusterStatus": READ_JOBS,
    "SubmitJob": SUBMIT_JOBS,
    "GetJob": READ_JOBS,
    "ListJobs": READ_JOBS,
    "WaitJob": READ_JOBS,
    "CancelJob": CANCEL_JOBS,
    "ListSchedules": READ_JOBS,
    "WatchEvents": READ_JOBS,
    "UpdateSchedule": CANCEL_JOBS,
    "ListExecutors": READ_JOBS,
    "DrainExecutor": OPERATE,
    "UndrainExecutor": OPERATE,
    "Attach": ATTACH,
    "WhoAmI": WHO_AM_I,
    "CreateToken": MANAGE_TOKENS,
    "ListTokens": MANAGE_TOKENS,
    "RevokeToken": MANAGE_TOKENS,
    "ListMembers": MANAGE_MEMBERS,
    "AddMember": MANAGE_MEMBERS,
    "RemoveMember": MANAGE_MEMBERS,
    # The executor's own service: its status names the tasks it runs; task output is job data.
    "GetStatus": READ_JOBS,
    "TaskLogs": READ_JOBS,
}

#: The standard services on every Rota gRPC port (``common/health.py``), by full name: a Rota call
#: named ``Check`` or ``Watch`` added later must not be open by accident. Health is OPEN because
#: probes (Kubernetes') hold no token and a status reveals nothing.
STANDARD_METHODS: dict[str, str] = {
    "/grpc.health.v1.Health/Check": OPEN,
    "/grpc.health.v1.Health/Watch": OPEN,
    "/grpc.health.v1.Health/List": OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": DESCRIBE,
    # Not served (the package has v1alpha only), but let through to answer UNIMPLEMENTED: grpcurl
    # asks v1 first and falls back to v1alpha only on that answer.
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": DESCRIBE,
}

#: The Rota services whose methods METHODS lists by short name.
_ROTA_SERVICES = ("/rota.Master/", "/rota.Executor/")


def allows(role: str, permission: str) -> bool:
    return permission == OPEN or permission in _GRANTS.get(role, frozenset())


def method_permission(full_method: str) -> str | None:
    """The permission a gRPC method (``/rota.Master/SubmitJob``) needs; None for one not in the tables."""
    if full_method in STANDARD_METHODS:
        return STANDARD_METHODS[full_method]
    if not full_method.startswith(_ROTA_SERVICES):
        return None
    return METHODS.get(full_method.rsplit("/", 1)[-1])


def may_cancel(role: str, caller: str, owner: str) -> bool:
    """Admins cancel any job; a submit token only the jobs it submitted."""
    return role == ADMIN or (allows(role, CANCEL_JOBS) and caller == owner)
