"""The gRPC contract (rota.proto) and the modules generated from it by ``make``."""
