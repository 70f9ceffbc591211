"""Just enough Rust lexing for the evals: brace depth outside strings/comments, function extraction.

Why this module exists: a completion of a function body is over when its braces close, and the
compile eval needs (doc comment, signature, body) triples out of real files. Both need braces
counted outside string, char and comment literals; a full parser (syn, tree-sitter) would be a
heavy dependency for this one job. Lifetimes (`'a`) and char literals (`'a'`) are told apart by
the closing quote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..data.rust_items import parse_items


def _code_braces(text: str):
    """Yield (index, +1 | -1) for each `{` / `}` that is code, not inside a literal or comment."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "/" and text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c == "/" and text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 260]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = len(re.match(r'r(#*)"', text[i:]).group(1))
            end = text.find('"' + "#" * hashes, i + 2 + hashes)
            i = n if end < 0 else end + 1 + hashes
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
        elif c == "'":
            if text.startswith("\\", i + 1):  # '\n', '\u{..}', '\''
                end = text.find("'", i + 3)
                i = n if end < 0 else end + 1
            elif i + 2 < n and text[i + 2] == "'":
                i += 3
            else:
                i += 1  # a lifetime
        else:
            if c == "{":
                yield i, 1
            elif c == "}":
                yield i, -1
            i += 1


def brace_depth(text: str) -> int:
    return sum(d for _, d in _code_braces(text))


def close_index(prompt: str, completion: str) -> int | None:
    """Length of the completion up to and including the `}` that closes the prompt's open
    braces (depth back to 0), or None when it has not closed yet."""
    depth, start = 0, len(prompt)
    for i, d in _code_braces(prompt + completion):
        depth += d
        if depth <= 0 and i >= start:
            return i + 1 - start
    return None


@dataclass
class RustFunction:
    prompt: str  # the file's `use` lines, the doc comment and the signature up to and with `{`
    body: str  # the original body after the prompt, with the closing `}`
    name: str


_FN = re.compile(r"^(?:pub(?:\([a-z]+\))? )?(?:const )?(?:unsafe )?fn (\w+)", re.M)
_USE = re.compile(r"^use [^;]+;\n", re.M)


CONTEXT_KINDS = ("struct", "enum", "type", "const", "static")
CONTEXT_ITEM_CHARS = 600  # a type or constant longer than this is not carried into a prompt


def _context(items: list, code: str) -> str:
    """The file's short type and constant items that `code` names, and those these name in turn."""
    chosen, frontier = [], code
    pool = [it for it in items if it.kind in CONTEXT_KINDS and it.name and len(it.text) <= CONTEXT_ITEM_CHARS]
    while True:
        new = [it for it in pool if it not in chosen and re.search(rf"\b{re.escape(it.name)}\b", frontier)]
        if not new:
            return "".join(it.text for it in pool if it in chosen)  # in file order
        chosen += new
        frontier = "".join(it.text for it in new)


def doc_functions(text: str) -> list[RustFunction]:
    """Top-level (column 0) functions with a `///` doc comment, each as prompt + body. The prompt
    carries the file's `use` lines and the file's short structs, enums, type aliases and constants
    that the function names (data/rust_items.py cuts them), so a function over its crate's own
    types can still stand alone."""
    uses = "".join(m.group(0) for m in _USE.finditer(text))
    items = parse_items(text)
    out = []
    for m in _FN.finditer(text):
        lines = text[:m.start()].split("\n")[:-1]
        attrs = []
        while lines and lines[-1].startswith("#["):
            attrs.insert(0, lines.pop())
        doc = []
        while lines and lines[-1].startswith("///"):
            doc.insert(0, lines.pop())
        if not doc:
            continue
        opened = next((i for i, d in _code_braces(text[m.start():]) if d == 1), None)
        if opened is None or ";" in text[m.start():m.start() + opened]:
            continue  # a declaration without a body (extern, trait)
        sig = text[m.start():m.start() + opened + 1]
        rest = text[m.start() + opened + 1:]
        end = close_index("{", rest)
        if end is None:
            continue
        context = _context(items, sig + rest[:end])
        prompt = (uses + "\n" if uses else "") + (context + "\n" if context else "") + "\n".join(doc + attrs) + "\n" + sig
        out.append(RustFunction(prompt=prompt, body=rest[:end], name=m.group(1)))
    return out
