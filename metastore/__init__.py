"""Everything that touches etcd: member launcher, client wrapper, keys, leases, election, watches."""
