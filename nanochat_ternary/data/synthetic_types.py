"""Synthetic Rust templates: structs with impl blocks and enums with `match`.

Why this module exists: part of the embedded training set (synthetic.py). Types, constructors,
`&self` / `&mut self` methods, derives, `Display`, unit and data-carrying enum variants, match
arms with ranges and guards. Expected values for the generated tests are computed in Python.
"""

from __future__ import annotations

import random

from .synthetic_funcs import eval_expr, expr_tree, render_expr
from .synthetic_words import Item, Names, doc, rust_lit, vis

STRUCT_LIT_WIDTH = 18  # rustfmt's default `struct_lit_width`


def struct_lit(indent: str, name: str, fields: list[str]) -> list[str]:
    """`Name { a, b }` on one line if short enough for rustfmt, else one field per line."""
    body = ", ".join(fields)
    if len(body) <= STRUCT_LIT_WIDTH:
        return [f"{indent}{name} {{ {body} }}"]
    return [f"{indent}{name} {{"] + [f"{indent}    {f}," for f in fields] + [f"{indent}}}"]


def _num(x: float | int, floats: bool) -> str:
    return f"{float(x)!r}" if floats else str(int(x))


def numeric_struct(rng: random.Random, nm: Names) -> Item:
    """A struct of numbers with `new`, a computed getter, a mutator and maybe `Display`."""
    ty = rng.choice(["i32", "i64", "f64"])
    floats = ty == "f64"
    name, fields = nm.type_name(), [nm.var() for _ in range(rng.randint(2, 3))]
    getter, target, amount = nm.func(rng.choice(["total", "score", "get", "calc"])), rng.choice(fields), nm.var()
    mutator = nm.func(rng.choice(["add", "grow", "boost"]))
    tree = expr_tree(rng, [f"self.{f}" for f in fields], 2)
    derive = rng.choice(["Debug, Clone, PartialEq", "Debug, Clone, Copy, PartialEq", "Debug, Default"])
    lines = doc(rng, f"A {name.lower()} described by its {' and '.join(fields)}.")
    lines += [f"#[derive({derive})]", f"pub struct {name} {{", *[f"    pub {f}: {ty}," for f in fields], "}", "",
              f"impl {name} {{", f"    pub fn new({', '.join(f'{f}: {ty}' for f in fields)}) -> Self {{"]
    lines += struct_lit("        ", "Self", fields) + ["    }", ""]
    lines += doc(rng, "Derived from the fields.", "    ")
    lines += [f"    pub fn {getter}(&self) -> {ty} {{", f"        {render_expr(tree, floats)}", "    }", "",
              f"    pub fn {mutator}(&mut self, {amount}: {ty}) {{", f"        self.{target} += {amount};", "    }",
              "}"]
    imports: set[str] = set()
    display = rng.random() < 0.3
    if display:
        imports.add("use std::fmt;")
        fmt_str = f"{name}(" + ", ".join("{}" for _ in fields) + ")"
        lines += ["", f"impl fmt::Display for {name} {{",
                  "    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {",
                  f"        write!(f, {rust_lit(fmt_str)}, {', '.join(f'self.{f}' for f in fields)})", "    }", "}"]
    vals = {f: rng.randint(-5, 9) for f in fields}
    extra = rng.randint(1, 9)
    tests = [f"let mut {name.lower()} = {name}::new({', '.join(_num(vals[f], floats) for f in fields)});"]
    env = {f"self.{f}": v for f, v in vals.items()}
    tests.append(f"assert_eq!({name.lower()}.{getter}(), {_num(eval_expr(tree, env), floats)});")
    tests.append(f"{name.lower()}.{mutator}({_num(extra, floats)});")
    tests.append(f"assert_eq!({name.lower()}.{target}, {_num(vals[target] + extra, floats)});")
    if display:
        vals[target] += extra
        tests.append(f"assert_eq!({name.lower()}.to_string(), "
                     f"{rust_lit(f'{name}(' + ', '.join(str(vals[f]) for f in fields) + ')')});")
    return Item("\n".join(lines), [(f"test_{name.lower()}", tests)], imports)


def container_struct(rng: random.Random, nm: Names) -> Item:
    """A struct wrapping a Vec or HashMap, with a handful of methods."""
    name, ty = nm.type_name(), rng.choice(["i32", "i64", "u32"])
    var = name.lower()
    if rng.random() < 0.5:
        field = nm.plural()
        push, pop = rng.choice(["push", "add", "insert"]), rng.choice(["pop", "take", "remove_last"])
        lines = [f"#[derive(Debug, Default)]", f"pub struct {name} {{", f"    {field}: Vec<{ty}>,", "}", "",
                 f"impl {name} {{", "    pub fn new() -> Self {"]
        lines += struct_lit("        ", "Self", [f"{field}: Vec::new()"]) + ["    }", "",
                  f"    pub fn {push}(&mut self, value: {ty}) {{", f"        self.{field}.push(value);", "    }", "",
                  f"    pub fn {pop}(&mut self) -> Option<{ty}> {{", f"        self.{field}.pop()", "    }"]
        extras = rng.sample(["len", "is_empty", "total", "peek"], rng.randint(1, 2))
        body = {"len": ("usize", f"self.{field}.len()"), "is_empty": ("bool", f"self.{field}.is_empty()"),
                "total": (ty, f"self.{field}.iter().sum()"), "peek": (f"Option<&{ty}>", f"self.{field}.last()")}
        for m in extras:
            lines += ["", f"    pub fn {m}(&self) -> {body[m][0]} {{", f"        {body[m][1]}", "    }"]
        lines.append("}")
        vals = [rng.randint(0, 9) for _ in range(rng.randint(1, 3))]
        tests = [f"let mut {var} = {name}::new();", *[f"{var}.{push}({v});" for v in vals]]
        want = {"len": str(len(vals)), "is_empty": "false", "total": str(sum(vals)), "peek": f"Some(&{vals[-1]})"}
        tests += [f"assert_eq!({var}.{m}(), {want[m]});" for m in extras]
        tests.append(f"assert_eq!({var}.{pop}(), Some({vals[-1]}));")
        return Item("\n".join(lines), [(f"test_{var}", tests)])
    field, add, get = nm.var(), nm.func("add"), nm.func("get")
    lines = [f"pub struct {name} {{", f"    {field}: HashMap<String, {ty}>,", "}", "", f"impl {name} {{",
             "    pub fn new() -> Self {"]
    lines += struct_lit("        ", "Self", [f"{field}: HashMap::new()"]) + ["    }", ""]
    lines += doc(rng, "Adds `amount` to the entry for `key`.", "    ")
    lines += [f"    pub fn {add}(&mut self, key: &str, amount: {ty}) {{",
              f"        *self.{field}.entry(key.to_string()).or_insert(0) += amount;", "    }", "",
              f"    pub fn {get}(&self, key: &str) -> {ty} {{", f"        self.{field}.get(key).copied().unwrap_or(0)",
              "    }", "}"]
    a, b = nm.word(), nm.word()
    x, y = rng.randint(1, 9), rng.randint(1, 9)
    want_a = x + y if a == b else x
    tests = [f"let mut {var} = {name}::new();", f"{var}.{add}({rust_lit(a)}, {x});", f"{var}.{add}({rust_lit(b)}, {y});",
             f"assert_eq!({var}.{get}({rust_lit(a)}), {want_a});", f'assert_eq!({var}.{get}("missing"), 0);']
    return Item("\n".join(lines), [(f"test_{var}", tests)], {"use std::collections::HashMap;"})


def unit_enum(rng: random.Random, nm: Names) -> Item:
    """A C-like enum and a `match` mapping variants to numbers, strings or the next variant."""
    name, variants = nm.enum()
    chosen = set(rng.sample(variants, rng.randint(3, len(variants))))
    variants = [v for v in variants if v in chosen]  # in their natural order (Low, Medium, High)
    prefix = rng.choice([name, "Self"])
    kind = rng.randrange(3)
    method = {0: rng.choice(["code", "weight", "rank", "value"]), 1: rng.choice(["label", "name", "as_str"]),
              2: rng.choice(["next", "following", "rotate"])}[kind]
    ret = {0: "u32", 1: "&'static str", 2: "Self"}[kind]
    nums = rng.sample(range(1, 20), len(variants))
    wildcard = kind == 0 and rng.random() < 0.4
    lines = [f"#[derive(Debug, Clone, Copy, PartialEq)]", f"pub enum {name} {{", *[f"    {v}," for v in variants],
             "}", "", f"impl {name} {{"] + doc(rng, f"Maps each {name.lower()} to its {method}.", "    ")
    lines += [f"    pub fn {method}(self) -> {ret} {{", "        match self {"]
    arms = variants[:-1] if wildcard else variants
    for i, v in enumerate(arms):
        out = {0: str(nums[i]), 1: rust_lit(v.lower()), 2: f"{prefix}::{variants[(i + 1) % len(variants)]}"}[kind]
        lines.append(f"            {prefix}::{v} => {out},")
    if wildcard:
        lines.append("            _ => 0,")
    lines += ["        }", "    }", "}"]
    i = rng.randrange(len(variants))
    if kind == 0:
        want = "0" if wildcard and i == len(variants) - 1 else str(nums[i])
    else:
        want = rust_lit(variants[i].lower()) if kind == 1 else f"{name}::{variants[(i + 1) % len(variants)]}"
    tests = [f"assert_eq!({name}::{variants[i]}.{method}(), {want});"]
    return Item("\n".join(lines), [(f"test_{name.lower()}_{method}", tests)])


def range_match(rng: random.Random, nm: Names) -> Item:
    """`match` on a number with ranges and a guard, returning an enum variant."""
    name, variants = nm.enum()
    variants = variants[:4] if len(variants) >= 4 else variants
    fname, arg = nm.func(rng.choice(["classify", "grade", "rate"])), nm.var()
    cuts = sorted(rng.sample(range(1, 60), len(variants) - 2))
    lines = [f"#[derive(Debug, PartialEq)]", f"pub enum {name} {{", *[f"    {v}," for v in variants], "}", ""]
    lines += doc(rng, f"Classifies `{arg}` into a {name.lower()}.")
    lines += [f"{vis(rng)}fn {fname}({arg}: u32) -> {name} {{", f"    match {arg} {{"]
    lo = 0
    for cut, v in zip(cuts, variants):
        lines.append(f"        {lo}..={cut} => {name}::{v},")
        lo = cut + 1
    k = rng.randint(2, 5)
    lines += [f"        x if x % {k} == 0 => {name}::{variants[-2]},", f"        _ => {name}::{variants[-1]},", "    }", "}"]

    def run(x: int) -> str:
        low = 0
        for cut, v in zip(cuts, variants):
            if low <= x <= cut:
                return v
            low = cut + 1
        return variants[-2] if x % k == 0 else variants[-1]
    args = [rng.randint(0, 80) for _ in range(rng.randint(1, 3))]
    tests = [f"assert_eq!({fname}({a}), {name}::{run(a)});" for a in args]
    return Item("\n".join(lines), [(f"test_{fname}", tests)])


_OP_VARIANTS = ["Add", "Sub", "Scale", "Reset", "Shift", "Double", "Keep", "Set"]


def data_enum(rng: random.Random, nm: Names) -> Item:
    """An enum whose variants carry data (tuple and struct variants) and a `match` over them."""
    name = nm.type_name() + rng.choice(["Op", "Command", "Action"])
    picks = rng.sample(_OP_VARIANTS, rng.randint(3, 4))
    nm.used.update(["amount", "op"])  # bound by the match arms below
    fname, state = nm.func("apply"), nm.var()
    shapes = {v: rng.choice([0, 1, 1, 2]) for v in picks}  # number of fields
    struct_style = {v: shapes[v] == 1 and rng.random() < 0.3 for v in picks}
    lines = [f"#[derive(Debug, Clone, Copy)]", f"pub enum {name} {{"]
    for v in picks:
        n = shapes[v]
        decl = "" if n == 0 else " { amount: i64 }" if struct_style[v] else "(i64)" if n == 1 else "(i64, i64)"
        lines.append(f"    {v}{decl},")
    lines += ["}", ""] + doc(rng, f"Applies one {name} to `{state}`.")
    lines += [f"{vis(rng)}fn {fname}({state}: i64, op: {name}) -> i64 {{", "    match op {"]
    exprs = {}
    for v in picks:
        n, op = shapes[v], rng.choice(["+", "-", "*"])
        if n == 0:
            pat, body = f"{name}::{v}", rng.choice([state, str(rng.randint(0, 5))])
            exprs[v] = (lambda s, b=body: s if b == state else int(b))
        elif n == 1:
            pat = f"{name}::{v} {{ amount }}" if struct_style[v] else f"{name}::{v}(amount)"
            body = f"{state} {op} amount"
            exprs[v] = (lambda s, a, o=op: s + a if o == "+" else s - a if o == "-" else s * a)
        else:
            pat, body = f"{name}::{v}(a, b)", f"{state} * a + b"
            exprs[v] = lambda s, a, b: s * a + b
        lines.append(f"        {pat} => {body},")
    lines += ["    }", "}"]
    tests = []
    for _ in range(rng.randint(1, 2)):
        v, s = rng.choice(picks), rng.randint(-9, 9)
        args = [rng.randint(-5, 5) for _ in range(shapes[v])]
        ctor = (f"{name}::{v} {{ amount: {args[0]} }}" if struct_style[v] else
                f"{name}::{v}({', '.join(map(str, args))})" if args else f"{name}::{v}")
        tests.append(f"assert_eq!({fname}({s}, {ctor}), {exprs[v](s, *args)});")
    return Item("\n".join(lines), [(f"test_{fname}", tests)])
