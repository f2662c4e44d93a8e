"""What a fault run records beside the clients: every value of the leader's write order in etcd,
as it happens, for the history checker's one-writer verdict (devtools/history.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

from rota.common.tls import TlsFiles
from rota.metastore import keys
from rota.metastore.client import EtcdClient


class WriteOrderRecorder:
    """Watches ``keys.WRITE_ORDER`` from now in a thread of its own; ``stop`` returns
    (revision, value) of every write, in revision order. The etcd client goes on from another
    member when one is cut off, from the revision after the last one seen."""

    def __init__(self, endpoints: Sequence[str], tls: TlsFiles | None = None) -> None:
        self.endpoints = list(endpoints)
        self.tls = tls
        self.orders: list[tuple[int, str]] = []
        #: When each of ``orders`` reached us (time.time()).
        self.times: list[float] = []
        self.error: BaseException | None = None
        self._stopping = False
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> WriteOrderRecorder:
        self._thread.start()
        if not self._started.wait(30):
            raise TimeoutError("the write-order watch did not start")
        if self.error:
            raise self.error
        return self

    def _run(self) -> None:
        self._task = self._loop.create_task(self._watch())
        try:
            self._loop.run_until_complete(self._task)
            self.error = RuntimeError("the write-order watch ended by itself")
        except asyncio.CancelledError:
            if not self._stopping:  # not by stop(): the history would have a hole
                self.error = RuntimeError("the write-order watch was cancelled before the run ended")
        except BaseException as e:  # noqa: BLE001 - handed to the test through stop()
            self.error = e
        finally:
            self._started.set()
            self._loop.close()

    async def _watch(self) -> None:
        async with EtcdClient(self.endpoints, timeout=10, tls=self.tls) as client:
            _, revision = await client.read(keys.WRITE_ORDER)
            self._started.set()
            while True:  # a watch that ends (its member cut off mid-stream) starts again after the last
                async for events in client.watch(keys.WRITE_ORDER, revision + 1, check_every=0.5):
                    now = time.time()
                    for e in events:
                        revision = e.kv.mod_revision
                        if e.type == "put":
                            self.orders.append((revision, e.kv.value.decode()))
                            self.times.append(now)
                await asyncio.sleep(0.05)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> list[tuple[int, str]]:
        self._stopping = True
        if self._task is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(15)
        if self.error:
            raise self.error
        return list(self.orders)
