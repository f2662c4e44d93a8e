"""The Rota master: gRPC services, leadership, scheduling core and the client library."""
