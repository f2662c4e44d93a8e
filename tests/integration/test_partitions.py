"""Link faults on a cluster of hosts (issue 17): three masters and two executors, each in a
network namespace of its own, over mutual TLS with tokens, as the README's multi-host commands
run them. Jobs keep coming while the links are cut; afterwards the history checker gives its
verdicts: nothing acknowledged lost, no task completed twice, no task on two executors at once,
one leader writing at a time. ``make partitions`` runs a longer, randomized sequence."""

from __future__ import annotations

import pytest

from rota.devtools.partitions import FaultRun

pytestmark = pytest.mark.etcd


def test_cut_links_keep_every_promise_and_work_resumes(network, local_cluster, tmp_path):
    cluster = local_cluster(network=network, tls=True, tokens=True, executors=2, executor_slots=2)
    with FaultRun(cluster, network, tmp_path / "effects.txt") as run:
        figures = [
            run.fault("leader-from-majority"),
            run.fault("executor-from-masters", target="e0"),
            run.fault("leader-one-way"),
        ]
        verdicts = run.finish()
    print("\n".join(map(str, figures + verdicts)))
    assert all(v.ok for v in verdicts), verdicts
    for f in (figures[0], figures[2]):
        assert f["new_leader_after_s"] is not None, f  # another master took over while it was cut
    assert len(run.acked) >= 20
