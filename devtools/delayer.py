"""Added latency for a host where the kernel has no ``tc netem``: every packet the host sends to
the bridge goes through an NFQUEUE (an iptables rule in the host, with --queue-bypass so packets
pass if this program is gone) and is let go ``--delay-ms`` later, in order.

    ip netns exec HOST python -m rota.devtools.delayer --delay-ms 20 [--queue 0]

Needs the NetfilterQueue package (``make partitions`` installs it) and iptables.
"""

from __future__ import annotations

import argparse
import collections
import selectors
import signal
import time
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay-ms", type=float, required=True)
    ap.add_argument("--queue", type=int, default=0)
    args = ap.parse_args()
    from netfilterqueue import NetfilterQueue  # only this program needs it

    delay = args.delay_ms / 1000
    held: collections.deque[tuple[float, Any]] = collections.deque()

    def hold(pkt: Any) -> None:
        held.append((time.monotonic() + delay, pkt))

    queue = NetfilterQueue()
    queue.bind(args.queue, hold, max_len=65536)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    sel = selectors.DefaultSelector()
    sel.register(queue.get_fd(), selectors.EVENT_READ)
    try:
        while not stop:
            timeout = max(0.0, held[0][0] - time.monotonic()) if held else 0.5
            if sel.select(timeout):
                queue.run(block=False)
            now = time.monotonic()
            while held and held[0][0] <= now:
                held.popleft()[1].accept()
    finally:
        for _, pkt in held:
            pkt.accept()
        queue.unbind()


if __name__ == "__main__":
    main()
