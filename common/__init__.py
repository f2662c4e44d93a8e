"""What every Rota program shares: config parsing, gRPC settings, logging, the HTTP port, metrics
primitives, job and task states, job files and ids, process helpers.

Importing it sets gRPC's process-wide settings, which gRPC reads once, when it is first imported.
"""

import os

# Rota processes fork children (etcd members, task processes, call workers, test clusters) that
# exec at once or never touch gRPC; gRPC's fork handlers are not needed and, with gRPC threads busy,
# abort children.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
