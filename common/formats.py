"""Job files and program config files as TOML, JSON or YAML, chosen by the file's extension
(``.json``, ``.yaml``/``.yml``, anything else TOML), parsed into the same tables so that one
validation gives the same errors whatever the format."""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXTENSIONS = {".json": "JSON", ".yaml": "YAML", ".yml": "YAML"}


class FormatError(ValueError):
    """Text that is not valid in its format: the message says which format and where."""


def format_of(path: str) -> str:
    for ext, name in EXTENSIONS.items():
        if path.lower().endswith(ext):
            return name
    return "TOML"


def _yaml(text: str) -> Any:
    """Safe YAML without aliases: an alias may stand for a table repeated a billion times."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _has_alias(node, set()):
            raise FormatError("invalid YAML: anchors and aliases (& and *) are not accepted")
        return loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def _has_alias(node: Any, seen: set[int]) -> bool:
    if id(node) in seen:
        return True  # the same node twice: only an alias does that
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        return any(_has_alias(k, seen) or _has_alias(v, seen) for k, v in node.value)
    if isinstance(node, yaml.SequenceNode):
        return any(_has_alias(v, seen) for v in node.value)
    return False


def parse(text: str, fmt: str) -> dict[str, Any]:
    """A table from ``text`` in ``fmt`` ("TOML", "JSON" or "YAML")."""
    try:
        if fmt == "JSON":
            data = json.loads(text)
        elif fmt == "YAML":
            data = _yaml(text)
        else:
            data = tomllib.loads(text)
    except FormatError:
        raise
    except RecursionError:
        raise FormatError(f"invalid {fmt}: nested too deeply") from None
    except (ValueError, yaml.YAMLError) as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise FormatError(
            f"invalid {fmt}: " + " ".join(str(e).replace('in "<unicode string>", ', "").split())
        ) from None
    if not isinstance(data, dict):
        raise FormatError(
            f"expected a table of keys at the top of the {fmt} document, got {type(data).__name__}"
        )
    return data
