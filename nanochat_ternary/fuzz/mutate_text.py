"""Structure-aware mutations of JSON documents and TOML configs.

Why this module exists: byte flips in a JSON or TOML file are almost always syntax errors, which
test one line of the loader. The interesting failures come from well-formed files with wrong
contents (a string where a number goes, a huge or negative size, a missing or extra key, a
duplicated vocabulary id), so these mutations keep the syntax and change the meaning.
"""

from __future__ import annotations

import json
import random
import re

WEIRD_VALUES = [None, True, False, 0, -1, 1, 2**31, 2**63, -(2**63), 10**30, 1e308, -1e-308, 0.5, "", "x", "\x00",
                "\ud7ff" * 3, [], [1, 2], {}, {"a": 1}, "9" * 400]


def _paths(doc, prefix=(), out=None, limit=4000):
    """Up to `limit` paths (tuples of keys / indices) into a JSON document."""
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    out.append(prefix)
    if isinstance(doc, dict):
        for k, v in doc.items():
            _paths(v, prefix + (k,), out, limit)
    elif isinstance(doc, list):
        idx = range(len(doc)) if len(doc) <= 55 else [*range(50), *range(len(doc) - 5, len(doc))]
        for i in idx:
            _paths(doc[i], prefix + (i,), out, limit)
    return out


def mutate_json(rng: random.Random, text: str, paths_cache: list | None = None) -> str:
    """Change one value of the document: replace, delete, duplicate or retype it."""
    doc = json.loads(text)
    paths = paths_cache if paths_cache is not None else _paths(doc)
    path = rng.choice(paths[1:]) if len(paths) > 1 else ()
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1] if path else None
    if key is None:
        return json.dumps(rng.choice(WEIRD_VALUES))
    current = parent[key]
    op = rng.randrange(5)
    if op == 0 and isinstance(parent, dict):
        del parent[key]
    elif op == 0 and isinstance(parent, list):
        parent.pop(key)
    elif op == 1 and isinstance(current, int) and not isinstance(current, bool):
        parent[key] = current + rng.choice([-1, 1, -1000, 1 << 20, 1 << 62])
    elif op == 2 and isinstance(parent, dict):
        parent[f"{key}_extra"] = current  # an unexpected extra key
        parent[key] = rng.choice(WEIRD_VALUES)
    elif op == 3 and isinstance(parent, list) and parent:
        parent.append(parent[rng.randrange(len(parent))])  # duplicated element
    else:
        parent[key] = rng.choice(WEIRD_VALUES)
    return json.dumps(doc)


_TOML_VALUES = ["0", "-1", "1", "2", "255", "257", "1e9", "9999999999999999999999", "-9223372036854775808", "0.5",
                "nan", "inf", "-inf", "true", '"x"', '""', "[]", "[1, 2]", "{}", "1979-05-27", '"cpu"', '"wsd"']


def mutate_toml(rng: random.Random, text: str) -> str:
    """Change one `key = value` line of a TOML config: new value, new key, dropped or duplicated."""
    lines = text.splitlines()
    assign = [i for i, line in enumerate(lines) if re.match(r"^\s*[A-Za-z_]+\s*=", line)]
    i = rng.choice(assign)
    key, _, _ = lines[i].partition("=")
    op = rng.randrange(6)
    if op <= 2:
        lines[i] = f"{key.strip()} = {rng.choice(_TOML_VALUES)}"
    elif op == 3:
        lines[i] = f"{key.strip()}_typo = 1"
    elif op == 4:
        del lines[i]
    else:
        lines.insert(i, lines[i])  # a duplicated key is a TOML error
    return "\n".join(lines) + "\n"
