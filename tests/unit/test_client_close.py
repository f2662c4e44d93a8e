"""A blocking client closed where it cannot run its loop (collected inside another event loop)
refuses plainly and leaves no coroutine behind unawaited."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from rota.client.api import Client


def test_closing_inside_another_loop_refuses_without_a_stray_coroutine() -> None:
    client = Client("127.0.0.1:1")  # channels open lazily: nothing listens, nothing is dialled

    async def inside() -> None:
        with pytest.raises(RuntimeError, match="another loop is running"):
            client.close()

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        asyncio.run(inside())
        gc.collect()
    assert not [w for w in seen if "never awaited" in str(w.message)], [str(w.message) for w in seen]
    client.close()
    client.close()  # twice is harmless
