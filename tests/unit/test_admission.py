"""The bounds an executor's hello is held to (common/admission.py)."""

from __future__ import annotations

import pytest

from rota.common.admission import MAX_REPORTED, MAX_SLOTS, BadHello, check_hello

GOOD = {"name": "ex-1", "addr": "10.0.0.5:10241", "slots": 4, "ttl": 5.0, "kinds": ["noop", "call"],
        "labels": {"zone": "a"}}  # fmt: skip


def test_a_reasonable_hello_passes() -> None:
    check_hello(**GOOD)
    check_hello(**{**GOOD, "ttl": 0.0, "slots": MAX_SLOTS, "executor_id": "ex-1-00ab12"})
    longest = "n" * 93  # its id, "<name>-<6 hex>", must pass too when it re-attaches
    check_hello(**{**GOOD, "name": longest, "executor_id": f"{longest}-00ab12"})


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"slots": 2**31 - 1}, "slots"),
        ({"slots": 0}, "slots"),
        ({"ttl": 10**9}, "TTL"),
        ({"ttl": 0.2}, "TTL"),
        ({"name": ""}, "name"),
        ({"name": "a/b"}, "name"),
        ({"name": "x" * 94}, "name"),
        ({"name": "-opt"}, "name"),
        ({"addr": "nowhere"}, "address"),
        ({"addr": "0.0.0.0:10241"}, "wildcard"),
        ({"addr": "h" * 300 + ":1"}, "address"),
        ({"addr": "10.0.0.5:70000"}, "address"),
        ({"kinds": []}, "kinds"),
        ({"kinds": ["no such/kind"]}, "kind"),
        ({"kinds": [f"k{i}" for i in range(65)]}, "kinds"),
        ({"labels": {f"k{i}": "v" for i in range(65)}}, "labels"),
        ({"labels": {"k": "v" * 257}}, "label"),
        ({"labels": {"": "v"}}, "label"),
        ({"reported": MAX_REPORTED + 1}, "reported"),
        ({"executor_id": "../../etc"}, "executor id"),
    ],
)
def test_each_field_out_of_bounds_is_refused_by_name(change: dict, needle: str) -> None:
    with pytest.raises(BadHello, match=needle):
        check_hello(**{**GOOD, **change})
