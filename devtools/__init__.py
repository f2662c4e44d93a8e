"""Development tooling, not part of a deployment: a local cluster of real processes for tests,
benchmarks and ``make demo``, and a local etcd cluster."""
