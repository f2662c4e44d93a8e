"""The Rota master: gRPC service, leadership, the leader's scheduling core and its adapters."""
