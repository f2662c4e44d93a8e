"""The Rota master: gRPC services, leadership, scheduling core and the client library."""

import os

# Rota processes fork children (etcd members, task processes, test clusters) that exec at
# once; gRPC's fork handlers are not needed and, with gRPC threads busy, abort children.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
