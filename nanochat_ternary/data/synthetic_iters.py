"""Synthetic Rust templates: iterator chains, Option/Result with `?`, Vec/String/HashMap.

Why this module exists: part of the embedded training set (synthetic.py); these are the idioms
a Rust code model must get right (closure patterns like `|&&x|`, `collect`, `?`, `entry`).
Expected values for the generated tests are computed in Python.
"""

from __future__ import annotations

import random

from .synthetic_words import INT_TYPES, Item, Names, doc, rust_lit, vis

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_CMPS = {"<": lambda a, b: a < b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
CHAIN_WIDTH = 60  # rustfmt's default `chain_width`


def chain(indent: str, receiver: str, calls: list[str]) -> list[str]:
    """A method chain, one line if it fits rustfmt's chain width, else one call per line."""
    one = receiver + "".join(f".{c}" for c in calls)
    if len(one) <= CHAIN_WIDTH:
        return [indent + one]
    return [indent + receiver] + [f"{indent}    .{c}" for c in calls]


def _slice_arg(xs: list[int]) -> str:
    return f"&[{', '.join(map(str, xs))}]"


def iter_fn(rng: random.Random, nm: Names) -> Item:
    """A function over `&[T]` made of one iterator chain."""
    ty = rng.choice(INT_TYPES)
    fname, xs = nm.func(), nm.plural()
    lit, lit2 = rng.randint(0, 9), rng.randint(1, 5)
    cmp, op = rng.choice(list(_CMPS)), rng.choice(list(_OPS))
    kind = rng.randrange(8)
    sig_extra, run = "", None
    if kind == 0:
        ret = ty
        calls = [f"iter()", f"filter(|&&x| x {cmp} {lit})", f"map(|&x| x {op} {lit2})", "sum()"]
        run = lambda v: sum(_OPS[op](x, lit2) for x in v if _CMPS[cmp](x, lit))
        text = f"Sums the {xs} that pass a threshold, after scaling."
    elif kind == 1:
        ret = f"Vec<{ty}>"
        calls = ["iter()", f"map(|x| x {op} {lit2})", "collect()"]
        run = lambda v: "vec![" + ", ".join(str(_OPS[op](x, lit2)) for x in v) + "]"
        text = f"Maps every element of `{xs}` to a new vector."
    elif kind == 2:
        ret = "usize"
        calls = ["iter()", f"filter(|x| **x {cmp} {lit})", "count()"]
        run = lambda v: sum(1 for x in v if _CMPS[cmp](x, lit))
        text = f"Counts how many {xs} compare {cmp} {lit}."
    elif kind == 3:
        ret, best = f"Option<{ty}>", rng.choice(["max", "min"])
        calls = ["iter()", "copied()", f"filter(|&x| x {cmp} {lit})", f"{best}()"]
        run = lambda v: (lambda s: f"Some({(max if best == 'max' else min)(s)})" if s else "None")(
            [x for x in v if _CMPS[cmp](x, lit)])
        text = f"The {best}imum of the matching {xs}, if any."
    elif kind == 4:
        ret, q = "bool", rng.choice(["any", "all"])
        calls = ["iter()", f"{q}(|&x| x {cmp} {lit})"]
        run = lambda v: (any if q == "any" else all)(_CMPS[cmp](x, lit) for x in v)
        text = f"Checks whether {q} of the {xs} compare {cmp} {lit}."
    elif kind == 5:
        ret = ty
        calls = ["iter()", f"fold({lit}, |acc, &x| acc {op} x * {lit2})"]

        def run(v):
            acc = lit
            for x in v:
                acc = _OPS[op](acc, x * lit2)
            return acc
        text = f"Folds `{xs}` into one value starting from {lit}."
    elif kind == 6:
        ret = ty
        calls = ["iter()", "enumerate()", "filter(|(i, _)| i % 2 == 0)", "map(|(_, &x)| x)", "sum()"]
        run = lambda v: sum(v[::2])
        text = f"Sums the {xs} at even positions."
    else:
        ret, other = ty, nm.plural()
        sig_extra = f", {other}: &[{ty}]"
        calls = ["iter()", f"zip({other}.iter())", "map(|(a, b)| a * b)", "sum()"]
        run = None
        text = f"Dot product of `{xs}` and `{other}`."
    lines = doc(rng, text) + [f"{vis(rng)}fn {fname}({xs}: &[{ty}]{sig_extra}) -> {ret} {{"]
    lines += chain("    ", xs, calls) + ["}"]
    tests: list[str] = []
    for _ in range(rng.randint(1, 2)):
        v = [rng.randint(-3, 9) for _ in range(rng.randint(0, 5))]
        if run is None:
            w = [rng.randint(-3, 9) for _ in v]
            tests.append(f"assert_eq!({fname}({_slice_arg(v)}, {_slice_arg(w)}), "
                         f"{sum(a * b for a, b in zip(v, w))});")
            continue
        out = run(v)
        call = f"{fname}({_slice_arg(v)})"
        tests.append(f"assert!({'' if out else '!'}{call});" if isinstance(out, bool)
                     else f"assert_eq!({call}, {out});")
    return Item("\n".join(lines), [(f"test_{fname}", tests)])


def result_fn(rng: random.Random, nm: Names) -> Item:
    """Parsing with `Result`, `map_err` and `?`, with a String or a custom error type."""
    fname, arg, val = nm.func("parse"), rng.choice(["input", "text", "line", "raw"]), nm.var()
    ty, limit, add = rng.choice(["u32", "i64", "u64"]), rng.randint(10, 500), rng.randint(1, 9)
    tests: list[str]
    if rng.random() < 0.5:
        lines = doc(rng, f"Parses `{arg}` as a {val} no larger than {limit}.")
        lines += [f"{vis(rng)}fn {fname}({arg}: &str) -> Result<{ty}, String> {{"]
        lines += chain("    ", f"let {val}: {ty} = {arg}", ["trim()", "parse()",
                                                            f'map_err(|_| format!("invalid {val}: {{}}", {arg}))?;'])
        lines += [f"    if {val} > {limit} {{", f'        return Err(String::from("{val} too large"));', "    }",
                  f"    Ok({val} + {add})", "}"]
        good = rng.randint(0, limit)
        tests = [f'assert_eq!({fname}(" {good} "), Ok({good + add}));',
                 f'assert!({fname}("{nm.word()}").is_err());',
                 f'assert!({fname}("{limit + rng.randint(1, 99)}").is_err());']
        return Item("\n".join(lines), [(f"test_{fname}", tests[: rng.randint(1, 3)])])
    err = nm.type_name() + "Error"
    lines = ["#[derive(Debug)]", f"pub enum {err} {{", "    Missing,",
             "    BadNumber(ParseIntError),", "}", "", f"impl From<ParseIntError> for {err} {{",
             "    fn from(err: ParseIntError) -> Self {", f"        {err}::BadNumber(err)", "    }", "}", ""]
    lines += doc(rng, f"Reads an optional {val}, failing on a missing or malformed value.")
    lines += [f"{vis(rng)}fn {fname}({arg}: Option<&str>) -> Result<{ty}, {err}> {{",
              f"    let text = {arg}.ok_or({err}::Missing)?;", f"    let {val} = text.trim().parse::<{ty}>()?;",
              f"    Ok({val} * {add})", "}"]
    good = rng.randint(0, 99)
    tests = [f'assert_eq!({fname}(Some("{good}")).unwrap(), {good * add});',
             f"assert!(matches!({fname}(None), Err({err}::Missing)));",
             f'assert!(matches!({fname}(Some("{nm.word()}")), Err({err}::BadNumber(_))));']
    return Item("\n".join(lines), [(f"test_{fname}", tests[: rng.randint(1, 3)])],
                {"use std::num::ParseIntError;"})


def option_fn(rng: random.Random, nm: Names) -> Item:
    """`Option` plumbing: `get(..)?`, `checked_*`, `if let`, `unwrap_or`."""
    ty = rng.choice(INT_TYPES)
    fname, xs = nm.func(), nm.plural()
    if rng.random() < 0.5:
        i, j = rng.choice(["i", "first"]), rng.choice(["j", "second"])
        a, b = nm.var(), nm.var()
        how = rng.choice(["add", "sub", "mul"])
        lines = doc(rng, f"Combines two entries of `{xs}`; `None` if an index is out of range.")
        lines += [f"{vis(rng)}fn {fname}({xs}: &[{ty}], {i}: usize, {j}: usize) -> Option<{ty}> {{",
                  f"    let {a} = {xs}.get({i})?;", f"    let {b} = {xs}.get({j})?;",
                  f"    {a}.checked_{how}(*{b})", "}"]
        v = [rng.randint(-9, 9) for _ in range(rng.randint(1, 4))]
        p, q = rng.randrange(len(v)), rng.randrange(len(v))
        out = {"add": v[p] + v[q], "sub": v[p] - v[q], "mul": v[p] * v[q]}[how]
        tests = [f"assert_eq!({fname}({_slice_arg(v)}, {p}, {q}), Some({out}));",
                 f"assert_eq!({fname}({_slice_arg(v)}, {len(v)}, 0), None);"]
        return Item("\n".join(lines), [(f"test_{fname}", tests)])
    div, fallback, n, d = nm.func("divide"), rng.randint(-1, 9), nm.var(), nm.var()
    lines = [f"fn {div}({n}: {ty}, {d}: {ty}) -> Option<{ty}> {{", f"    if {d} == 0 {{", "        None",
             "    } else {", f"        Some({n} / {d})", "    }", "}", ""]
    lines += doc(rng, f"Divides each pair, using {fallback} where the divisor is zero.")
    lines += [f"{vis(rng)}fn {fname}(pairs: &[({ty}, {ty})]) -> Vec<{ty}> {{", "    let mut out = Vec::new();",
              "    for &(a, b) in pairs {"]
    if rng.random() < 0.5:
        lines += [f"        out.push({div}(a, b).unwrap_or({fallback}));"]
    else:
        lines += [f"        if let Some(q) = {div}(a, b) {{", "            out.push(q);", "        } else {",
                  f"            out.push({fallback});", "        }"]
    lines += ["    }", "    out", "}"]
    pairs = [(rng.randint(0, 50), rng.randint(0, 5)) for _ in range(rng.randint(1, 3))]
    want = ", ".join(str(a // b if b else fallback) for a, b in pairs)
    tests = [f"assert_eq!({fname}(&[{', '.join(f'({a}, {b})' for a, b in pairs)}]), vec![{want}]);"]
    return Item("\n".join(lines), [(f"test_{fname}", tests)])


def collection_fn(rng: random.Random, nm: Names) -> Item:
    """HashMap counting, String building or Vec sorting."""
    kind = rng.randrange(4)
    words = [nm.word() for _ in range(rng.randint(2, 5))]
    text = " ".join(words)
    imports: set[str] = set()
    if kind == 0:
        fname, counts = nm.func("count"), nm.plural()
        imports.add("use std::collections::HashMap;")
        lines = doc(rng, "Counts how often each word occurs.")
        lines += [f"{vis(rng)}fn {fname}(text: &str) -> HashMap<String, usize> {{",
                  f"    let mut {counts} = HashMap::new();", "    for word in text.split_whitespace() {",
                  f"        *{counts}.entry(word.to_string()).or_insert(0) += 1;", "    }", f"    {counts}", "}"]
        w = words[0]
        tests = [f"let counts = {fname}({rust_lit(text)});",
                 f"assert_eq!(counts.get({rust_lit(w)}), Some(&{words.count(w)}));",
                 f"assert_eq!(counts.len(), {len(set(words))});"]
    elif kind == 1:
        fname, sep = nm.func("build"), rng.choice([", ", "-", " | ", "/"])
        lines = doc(rng, "Joins the names with a separator.")
        lines += [f"{vis(rng)}fn {fname}(names: &[&str]) -> String {{", "    let mut out = String::new();",
                  "    for (i, name) in names.iter().enumerate() {", "        if i > 0 {",
                  f"            out.push_str({rust_lit(sep)});", "        }", "        out.push_str(name);", "    }",
                  "    out", "}"]
        tests = [f"assert_eq!({fname}(&[{', '.join(map(rust_lit, words))}]), {rust_lit(sep.join(words))});"]
    elif kind == 2:
        fname, xs = nm.func(), nm.plural()
        ty, k = rng.choice(INT_TYPES), rng.randint(0, 5)
        lines = doc(rng, f"Returns the sorted, deduplicated {xs} above {k}.")
        lines += [f"{vis(rng)}fn {fname}({xs}: &[{ty}]) -> Vec<{ty}> {{", f"    let mut out: Vec<{ty}> = {xs}.to_vec();",
                  f"    out.retain(|&x| x > {k});", "    out.sort();", "    out.dedup();", "    out", "}"]
        v = [rng.randint(0, 9) for _ in range(rng.randint(0, 6))]
        tests = [f"assert_eq!({fname}({_slice_arg(v)}), vec![{', '.join(map(str, sorted(set(x for x in v if x > k))))}]);"]
    else:
        fname = nm.func("build")
        rev = rng.random() < 0.5
        lines = doc(rng, "Reverses the order of the words." if rev else "Upper-cases every word.")
        if rev:
            lines += [f"{vis(rng)}fn {fname}(text: &str) -> String {{",
                      "    let words: Vec<&str> = text.split_whitespace().rev().collect();",
                      '    words.join(" ")', "}"]
            want = " ".join(reversed(words))
        else:
            lines += [f"{vis(rng)}fn {fname}(text: &str) -> Vec<String> {{"]
            lines += chain("    ", "text", ["split_whitespace()", "map(|w| w.to_uppercase())", "collect()"]) + ["}"]
            want = None
        tests = [f"assert_eq!({fname}({rust_lit(text)}), {rust_lit(want)});" if rev else
                 f"assert_eq!({fname}({rust_lit(text)}).len(), {len(words)});"]
    return Item("\n".join(lines), [(f"test_{fname}", tests)], imports)
