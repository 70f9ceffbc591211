"""Top-level items of a rustfmt-shaped Rust file: doc comment, attributes, header, full text.

Why this module exists: instruction pairs (data/instruct.py) are made from items — the doc
comment and signature become the request, the item is the answer — so something must cut a
file into items. No maintained Python library parses Rust (tree-sitter needs a compiled
grammar), and rustfmt output is regular enough for a line-based cut: an item starts at column 0
(after its `///` lines and `#[...]` attributes) and ends at the first `}` line at column 0, or
at its own line when that line ends with `;` or a closing brace. Items this cannot delimit
(macros, items that never close) are skipped, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# fn / struct / enum / trait / impl / type / const / static / mod, with optional visibility
_HEADER = re.compile(
    r"^(?:pub(?:\([^)]*\))?\s+)?(?:(?:const|async|unsafe|extern\s+\"C\")\s+)*"
    r"(?P<kind>fn|struct|enum|trait|impl|type|const|static|mod)\b\s*(?P<rest>.*)$")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class RustItem:
    kind: str  # fn, struct, enum, trait, impl, ...
    name: str  # the item's name (for impl: the implemented type)
    doc: str  # the `///` lines joined with spaces ("" when undocumented)
    signature: str  # the header up to its opening brace or ';' (e.g. "pub fn f(x: i32) -> i32")
    text: str  # the whole item: doc, attributes and body


def _name(kind: str, rest: str) -> str:
    if kind == "impl":  # `impl<T> Trait for Type<T>` -> Type; `impl Type` -> Type
        rest = re.sub(r"^<[^>]*>\s*", "", rest)
        rest = rest.split(" for ", 1)[1] if " for " in rest else rest
    m = _NAME.match(rest)
    return m.group(0) if m else ""


def _signature(lines: list[str]) -> str:
    """The header text before the body: one line, or a multi-line parameter list joined."""
    out = []
    for line in lines:
        cut = line.split(" {", 1)[0] if line.rstrip().endswith("{") else line
        out.append(cut.strip())
        if line.rstrip().endswith(("{", ";")) or cut is not line:
            break
    sig = " ".join(out).rstrip(";").strip()
    return re.sub(r"\(\s+", "(", re.sub(r",?\s+\)", ")", sig))


def parse_items(source: str) -> list[RustItem]:
    """The top-level items of `source`, in order."""
    lines = source.split("\n")
    items: list[RustItem] = []
    i = 0
    while i < len(lines):
        start = i
        while i < len(lines) and (lines[i].startswith("///") or lines[i].startswith("#[")):
            i += 1
        if i >= len(lines):
            break
        m = _HEADER.match(lines[i])
        if not m:
            i += 1
            continue
        head = i
        end = None
        if lines[i].rstrip().endswith((";", "}")):
            end = i
        else:
            for j in range(i + 1, len(lines)):
                if lines[j].startswith("}"):
                    end = j
                    break
                if lines[j] and not lines[j][0].isspace() and not lines[j].startswith((")", "where", "{")):
                    break  # another top-level line before the close: not an item we can cut
        if end is None:
            i = head + 1
            continue
        doc = " ".join(l[3:].strip() for l in lines[start:head] if l.startswith("///")).strip()
        kind = m.group("kind")
        items.append(RustItem(kind, _name(kind, m.group("rest")), doc, _signature(lines[head:end + 1]),
                              "\n".join(lines[start:end + 1]) + "\n"))
        i = end + 1
    return items
