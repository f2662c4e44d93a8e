"""The built-in example job type ``fanout``: one shell command run once per item of a list.

::

    type = "fanout"
    name = "thumbnails"
    command = 'convert "$FANOUT_ITEM" -resize 64x64 "thumbs/$FANOUT_ITEM"'
    items = ["a.png", "b.png", "c.png"]
    parallel = 2          # optional: at most this many shards; default one per item

It expands to one ``shell`` task with ``shards``: shard K runs the command for items K, K + P,
K + 2P ... (P shards), one after another, each with ``FANOUT_ITEM`` (the item) and
``FANOUT_INDEX`` (its index in ``items``) in its environment, and fails at the first item whose
command fails. The items travel in the task's argv, so their size is bounded by what one exec takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rota.jobtypes import JobTypeError, check_keys

KEYS = ("command", "items", "parallel", "env")
TASK_NAME = "fanout"
MAX_ITEMS = 10_000
#: One argv string: Linux refuses any longer than 128 KiB.
MAX_ITEM_BYTES = 4096
MAX_COMMAND_BYTES = 64 * 1024
#: The command and the items together, well under the 2 MiB an exec takes by default.
MAX_TOTAL_BYTES = 1024 * 1024

#: Run as ``sh -c DRIVER fanout COMMAND STEP ITEM...``: from this shard's first item, every STEP-th.
DRIVER = """cmd=$1 step=$2
shift 2
i=$ROTA_SHARD_INDEX
shift "$i"
while :; do
  FANOUT_ITEM=$1 FANOUT_INDEX=$i /bin/sh -c "$cmd" || exit
  [ "$#" -gt "$step" ] || exit 0
  shift "$step"
  i=$((i + step))
done
"""


class Fanout:
    """``expand`` for ``type = "fanout"``."""

    @staticmethod
    def expand(table: dict[str, Any]) -> dict[str, Any]:
        check_keys(table, KEYS)
        command = _command(table)
        items = _items(table)
        total = len(command.encode()) + sum(len(item.encode()) for item in items)
        if total > MAX_TOTAL_BYTES:
            raise JobTypeError(
                "items", f"the command and items come to {total} bytes; at most {MAX_TOTAL_BYTES} fit"
            )
        shards = min(_parallel(table, len(items)), len(items))
        task: dict[str, Any] = {
            "name": TASK_NAME,
            "kind": "shell",
            "shards": shards,
            "command": ["/bin/sh", "-c", DRIVER, "fanout", command, str(shards), *items],
        }
        if "env" in table:
            task["env"] = table["env"]
        return {"task": [task]}


def _command(table: Mapping[str, Any]) -> str:
    if "command" not in table:
        raise JobTypeError("command", "missing: a shell command line is required")
    command = table["command"]
    if not isinstance(command, str):
        raise JobTypeError("command", f"expected a string (run by /bin/sh -c), got {type(command).__name__}")
    if not command.strip():
        raise JobTypeError("command", "must not be empty")
    if "\0" in command:
        raise JobTypeError("command", "must not contain a NUL character")
    if _size("command", command) > MAX_COMMAND_BYTES:
        raise JobTypeError("command", f"longer than {MAX_COMMAND_BYTES} bytes")
    return command


def _items(table: Mapping[str, Any]) -> list[str]:
    if "items" not in table:
        raise JobTypeError("items", "missing: an array of strings is required")
    items = table["items"]
    if not isinstance(items, list):
        raise JobTypeError("items", f"expected an array of strings, got {type(items).__name__}")
    if not items:
        raise JobTypeError("items", "must not be empty")
    if len(items) > MAX_ITEMS:
        raise JobTypeError("items", f"{len(items)} items: at most {MAX_ITEMS}")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise JobTypeError(f"items[{i}]", f"expected a string, got {type(item).__name__}")
        if "\0" in item:
            raise JobTypeError(f"items[{i}]", "must not contain a NUL character")
        if _size(f"items[{i}]", item) > MAX_ITEM_BYTES:
            raise JobTypeError(f"items[{i}]", f"longer than {MAX_ITEM_BYTES} bytes")
    return list(items)


def _parallel(table: Mapping[str, Any], default: int) -> int:
    if "parallel" not in table:
        return default
    parallel = table["parallel"]
    if isinstance(parallel, bool) or not isinstance(parallel, int):
        raise JobTypeError("parallel", f"expected an integer >= 1, got {type(parallel).__name__}")
    if parallel < 1:
        raise JobTypeError("parallel", f"expected an integer >= 1, got {parallel}")
    return parallel


def _size(key: str, text: str) -> int:
    """Its length in UTF-8; a lone surrogate (JSON allows one) cannot be passed to a process."""
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        raise JobTypeError(key, "not valid Unicode text (a lone surrogate)") from None
