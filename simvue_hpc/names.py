"""Generated run names (adjective-noun) and every rule for user-given names: runs, metrics, folders, tags, metadata.

The rules are the Simvue server's, so what is accepted here is accepted there.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any

from .errors import ConfigurationError

RUN_NAME = re.compile(r"^[a-zA-Z0-9\-\_\s\/\.:]+$")
TAG_OR_KEY = re.compile(r"^[\w\-\s\.]+$")
SHA256 = re.compile(r"[0-9a-f]{64}")  # a file's content address in the store and on the wire
METRIC_NAME = re.compile(r"^[a-zA-Z0-9\-\_\s\/\.:=><+\(\)%]+$")

_ADJECTIVES = (
    "able",
    "amber",
    "ancient",
    "azure",
    "bold",
    "brave",
    "brisk",
    "calm",
    "clever",
    "cosmic",
    "crisp",
    "curious",
    "daring",
    "deep",
    "eager",
    "early",
    "electric",
    "fair",
    "fast",
    "fierce",
    "fluent",
    "frosty",
    "gentle",
    "giant",
    "golden",
    "grand",
    "happy",
    "hidden",
    "humble",
    "icy",
    "jolly",
    "keen",
    "kind",
    "lively",
    "lucid",
    "lunar",
    "merry",
    "mighty",
    "misty",
    "modest",
    "noble",
    "odd",
    "olive",
    "patient",
    "plucky",
    "polar",
    "proud",
    "quick",
    "quiet",
    "rapid",
    "rare",
    "regal",
    "rosy",
    "rustic",
    "serene",
    "sharp",
    "shiny",
    "silent",
    "silver",
    "sleek",
    "smooth",
    "solar",
    "steady",
    "stellar",
    "stormy",
    "sunny",
    "swift",
    "tidy",
    "tranquil",
    "vast",
    "vivid",
    "warm",
    "wild",
    "wise",
    "witty",
    "young",
    "zesty",
)
_NOUNS = (
    "albatross",
    "anvil",
    "aurora",
    "badger",
    "beacon",
    "bison",
    "canyon",
    "comet",
    "condor",
    "coral",
    "crater",
    "delta",
    "dune",
    "eagle",
    "ember",
    "falcon",
    "fjord",
    "fox",
    "galaxy",
    "geyser",
    "glacier",
    "gorge",
    "harbor",
    "hawk",
    "heron",
    "horizon",
    "ibis",
    "island",
    "jaguar",
    "kestrel",
    "lagoon",
    "lantern",
    "lynx",
    "magnet",
    "marmot",
    "meadow",
    "meteor",
    "nebula",
    "newt",
    "oasis",
    "orbit",
    "otter",
    "owl",
    "panda",
    "pebble",
    "pulsar",
    "quasar",
    "quokka",
    "raven",
    "reef",
    "river",
    "saturn",
    "sequoia",
    "sparrow",
    "summit",
    "tapir",
    "tide",
    "tundra",
    "valley",
    "vortex",
    "walrus",
    "willow",
    "wombat",
    "yak",
    "zephyr",
)


def check_metric_name(name: object) -> str:
    """The name itself, or a ValueError saying which rule it breaks."""
    if not isinstance(name, str):
        raise ConfigurationError(f"metric names must be strings, got {type(name).__name__} {name!r}")
    if not METRIC_NAME.match(name):
        raise ConfigurationError(
            f"metric name {name!r} may only contain letters, digits, spaces and - _ / . : = > < + ( ) %"
        )
    return name


def is_sha256(text: object) -> bool:
    """True for 64 lowercase hex digits: the only names the store gives saved files."""
    return isinstance(text, str) and SHA256.fullmatch(text) is not None


def generate_name() -> str:
    """A random adjective-noun name, like the official client's."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}"


def check_run_name(name: str) -> str:
    if not isinstance(name, str) or not RUN_NAME.match(name):
        raise ConfigurationError(f"name {name!r} may only contain letters, digits, spaces and - _ / . :")
    return name


def check_folder(folder: str) -> str:
    if not isinstance(folder, str) or not folder.startswith("/"):
        raise ConfigurationError(f"folder {folder!r} must be a path starting with '/'")
    if "//" in folder or any(not RUN_NAME.match(part) for part in folder.strip("/").split("/") if part):
        raise ConfigurationError(f"folder {folder!r}: each part may only contain letters, digits, spaces and - _ . :")
    return folder.rstrip("/") or "/"


def check_tags(tags: Any, field: str = "tags") -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str) or not isinstance(tags, (list, tuple)):
        raise ConfigurationError(f"{field} must be a list of strings")
    for tag in tags:
        if not isinstance(tag, str) or not TAG_OR_KEY.match(tag):
            raise ConfigurationError(f"{field}: {tag!r} may only contain letters, digits, spaces and - _ .")
    return list(tags)


def check_metadata(metadata: Any, field: str = "metadata") -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ConfigurationError(f"{field} must be a mapping of string keys to values")
    for key, value in metadata.items():
        if not isinstance(key, str) or not TAG_OR_KEY.match(key):
            raise ConfigurationError(f"{field}: key {key!r} may only contain letters, digits, spaces and - _ .")
        _check_json_like(value, f"{field}[{key!r}]")
    return dict(metadata)


def _check_json_like(value: Any, where: str) -> None:
    """Metadata travels as msgpack and ends up as JSON: str keys, JSON-like values only."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json_like(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigurationError(f"{where}: keys must be strings, got {type(key).__name__} {key!r}")
            _check_json_like(item, f"{where}[{key!r}]")
        return
    raise ConfigurationError(
        f"{where}: values must be str, int, float, bool, None, list or dict, not {type(value).__name__}"
    )
