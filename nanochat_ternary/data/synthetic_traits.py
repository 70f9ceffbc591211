"""Synthetic Rust templates: traits with impls, operator traits, and generics with bounds.

Why this module exists: part of the embedded training set (synthetic.py). Trait declarations
with default methods, several `impl Trait for Type`, `&dyn`/`impl Trait`/`<T: Trait>` use
sites, `impl Add`, `From`, and generic functions and structs with bounds and `where` clauses.
"""

from __future__ import annotations

import random

from .synthetic_types import struct_lit
from .synthetic_words import Item, Names, doc, rust_lit, vis

# trait name, its required method
_TRAITS = [("Priced", "cost"), ("Scored", "score"), ("Weighted", "weight"), ("Measured", "size"),
           ("Rated", "rating"), ("Bounded", "extent")]


def numeric_trait(rng: random.Random, nm: Names) -> Item:
    """A trait with one required and one default method, implemented by two structs."""
    trait = nm.take(lambda: rng.choice(_TRAITS)[0])
    method = dict(_TRAITS)[trait.rstrip("0123456789")]
    ty = rng.choice(["u32", "u64", "i64"])
    k = rng.randint(2, 5)
    lines = doc(rng, f"Anything that has a {method}.") + [f"pub trait {trait} {{", f"    fn {method}(&self) -> {ty};"]
    if rng.random() < 0.6:
        lines += ["", f"    fn is_big(&self) -> bool {{", f"        self.{method}() > {k * 5}", "    }"]
    lines += ["}"]
    structs: list[tuple[str, list[str], callable, str]] = []
    for _ in range(2):
        name, fields = nm.type_name(), [nm.var() for _ in range(rng.randint(1, 2))]
        mult = rng.randint(1, 4)
        expr = " + ".join(f"self.{f}" for f in fields)
        expr = f"({expr}) * {mult}" if len(fields) > 1 and mult > 1 else f"{expr} * {mult}" if mult > 1 else expr
        lines += ["", f"pub struct {name} {{", *[f"    pub {f}: {ty}," for f in fields], "}", "",
                  f"impl {trait} for {name} {{", f"    fn {method}(&self) -> {ty} {{", f"        {expr}", "    }", "}"]
        structs.append((name, fields, lambda vals, m=mult: sum(vals) * m, expr))
    style = rng.randrange(3)
    fname = nm.func("total" if style == 0 else "describe")
    if style == 0:
        lines += ["", f"{vis(rng)}fn {fname}(items: &[&dyn {trait}]) -> {ty} {{",
                  f"    items.iter().map(|item| item.{method}()).sum()", "}"]
    elif style == 1:
        lines += ["", f"{vis(rng)}fn {fname}(item: &impl {trait}) -> String {{",
                  f'    format!("{method} = {{}}", item.{method}())', "}"]
    else:
        lines += ["", f"{vis(rng)}fn {fname}<T: {trait}>(a: &T, b: &T) -> {ty} {{",
                  f"    a.{method}().max(b.{method}())", "}"]
    tests, made = [], []
    for i, (name, fields, run, _) in enumerate(structs):
        vals = [rng.randint(0, 9) for _ in fields]
        var = f"{name.lower()}"
        tests += struct_lit("", f"let {var} = {name}", [f"{f}: {v}" for f, v in zip(fields, vals)])
        tests[-1] += ";"
        made.append((var, run(vals)))
    tests.append(f"assert_eq!({made[0][0]}.{method}(), {made[0][1]});")
    if style == 0:
        tests.append(f"assert_eq!({fname}(&[&{made[0][0]}, &{made[1][0]}]), {made[0][1] + made[1][1]});")
    elif style == 1:
        tests.append(f"assert_eq!({fname}(&{made[1][0]}), {rust_lit(f'{method} = {made[1][1]}')});")
    else:
        tests.append(f"assert_eq!({fname}(&{made[0][0]}, &{made[0][0]}), {made[0][1]});")
    return Item("\n".join(lines), [(f"test_{fname}", tests)])


def describe_trait(rng: random.Random, nm: Names) -> Item:
    """A `String`-returning trait with a default method using `format!`."""
    trait = nm.take(lambda: rng.choice(["Describe", "Summary", "Label", "Greet"]))
    name, field = nm.type_name(), rng.choice(["id", "code", "serial", "number"])
    word = name.lower()
    lines = [f"pub trait {trait} {{", "    fn name(&self) -> String;", "",
             "    fn describe(&self) -> String {", f'        format!("<{{}}>", self.name())', "    }", "}", "",
             f"#[derive(Debug)]", f"pub struct {name} {{", f"    pub {field}: u32,", "}", "",
             f"impl {trait} for {name} {{", "    fn name(&self) -> String {",
             f'        format!("{word} #{{}}", self.{field})', "    }", "}"]
    n = rng.randint(1, 99)
    tests = [f"let item = {name} {{ {field}: {n} }};", f'assert_eq!(item.describe(), "<{word} #{n}>");']
    return Item("\n".join(lines), [(f"test_{word}_describe", tests)])


def operator_impl(rng: random.Random, nm: Names) -> Item:
    """A small Copy struct with `impl Add` (or Sub) and `impl From<(T, T)>`."""
    name, ty = nm.type_name(), rng.choice(["i32", "i64", "f64"])
    x, y = rng.choice([("x", "y"), ("dx", "dy"), ("row", "col"), ("a", "b")])
    trait, op = rng.choice([("Add", "+"), ("Sub", "-")])
    method = trait.lower()
    lines = ["#[derive(Debug, Clone, Copy, PartialEq)]", f"pub struct {name} {{",
             f"    pub {x}: {ty},", f"    pub {y}: {ty},", "}", "", f"impl {trait} for {name} {{",
             "    type Output = Self;", "", f"    fn {method}(self, other: Self) -> Self {{"]
    lines += struct_lit("        ", "Self", [f"{x}: self.{x} {op} other.{x}", f"{y}: self.{y} {op} other.{y}"])
    lines += ["    }", "}"]
    has_from = rng.random() < 0.5
    if has_from:
        lines += ["", f"impl From<({ty}, {ty})> for {name} {{", f"    fn from(({x}, {y}): ({ty}, {ty})) -> Self {{"]
        lines += struct_lit("        ", "Self", [x, y]) + ["    }", "}"]
    fmt = (lambda v: f"{float(v)!r}") if ty == "f64" else str
    a, b = [rng.randint(-9, 9) for _ in range(2)], [rng.randint(-9, 9) for _ in range(2)]
    c = [a[0] + b[0], a[1] + b[1]] if op == "+" else [a[0] - b[0], a[1] - b[1]]
    tests = []
    for var, v in (("p", a), ("q", b)):
        if has_from:
            tests.append(f"let {var} = {name}::from(({fmt(v[0])}, {fmt(v[1])}));")
        else:
            tests += struct_lit("", f"let {var} = {name}", [f"{x}: {fmt(v[0])}", f"{y}: {fmt(v[1])}"])
            tests[-1] += ";"
    tests += [f"let r = p {op} q;", f"assert_eq!(r.{x}, {fmt(c[0])});", f"assert_eq!(r.{y}, {fmt(c[1])});"]
    return Item("\n".join(lines), [(f"test_{name.lower()}_{method}", tests)], {f"use std::ops::{trait};"})


def generic_fn(rng: random.Random, nm: Names) -> Item:
    """Generic functions with trait bounds (inline or `where`)."""
    kind = rng.randrange(3)
    xs = nm.plural()
    vals = [rng.randint(-9, 9) for _ in range(rng.randint(1, 5))]
    arg = f"&[{', '.join(map(str, vals))}]"
    imports: set[str] = set()
    if kind == 0:
        best, cmp = rng.choice([("largest", ">"), ("smallest", "<")])
        fname = nm.func("find")
        lines = doc(rng, f"The {best} element, or `None` for an empty slice.")
        lines += [f"{vis(rng)}fn {fname}<T: PartialOrd + Copy>({xs}: &[T]) -> Option<T> {{",
                  f"    let mut best = *{xs}.first()?;", f"    for &item in {xs} {{", f"        if item {cmp} best {{",
                  "            best = item;", "        }", "    }", "    Some(best)", "}"]
        want = max(vals) if cmp == ">" else min(vals)
        tests = [f"assert_eq!({fname}({arg}), Some({want}));", f"assert_eq!({fname}::<i32>(&[]), None);"]
    elif kind == 1:
        fname = nm.func("count")
        lines = doc(rng, "Counts the elements equal to `target`.")
        lines += [f"{vis(rng)}fn {fname}<T: PartialEq>({xs}: &[T], target: &T) -> usize {{",
                  f"    {xs}.iter().filter(|x| *x == target).count()", "}"]
        t = rng.choice(vals)
        tests = [f"assert_eq!({fname}({arg}, &{t}), {vals.count(t)});"]
    else:
        fname, sep = nm.func("build"), rng.choice([", ", " ", ";"])
        imports.add("use std::fmt::Display;")
        lines = doc(rng, "Formats every element and joins them.")
        lines += [f"{vis(rng)}fn {fname}<T>({xs}: &[T]) -> String", "where", "    T: Display,", "{",
                  f"    let parts: Vec<String> = {xs}.iter().map(|x| format!(\"[{{}}]\", x)).collect();",
                  f"    parts.join({rust_lit(sep)})", "}"]
        tests = [f"assert_eq!({fname}({arg}), {rust_lit(sep.join(f'[{v}]' for v in vals))});"]
    return Item("\n".join(lines), [(f"test_{fname}", tests)], imports)


def generic_struct(rng: random.Random, nm: Names) -> Item:
    """A generic struct `Name<T>` with an `impl<T: Bound>` block."""
    name = nm.take(lambda: rng.choice(["Pair", "Couple", "Duo", "Range", "Span"]))
    a, b = rng.choice([("first", "second"), ("left", "right"), ("low", "high")])
    big = nm.func(rng.choice(["larger", "max", "pick"]))
    lines = [f"#[derive(Debug, Clone)]", f"pub struct {name}<T> {{", f"    {a}: T,", f"    {b}: T,", "}", "",
             f"impl<T: PartialOrd + Copy> {name}<T> {{", f"    pub fn new({a}: T, {b}: T) -> Self {{"]
    lines += struct_lit("        ", "Self", [a, b]) + ["    }", ""]
    lines += doc(rng, "Returns the larger of the two values.", "    ")
    lines += [f"    pub fn {big}(&self) -> T {{", f"        if self.{a} > self.{b} {{", f"            self.{a}",
              "        } else {", f"            self.{b}", "        }", "    }"]
    swap = rng.random() < 0.5
    if swap:
        lines += ["", "    pub fn swap(self) -> Self {"] + struct_lit("        ", "Self", [f"{a}: self.{b}", f"{b}: self.{a}"])
        lines += ["    }"]
    lines.append("}")
    p, q = rng.randint(-9, 9), rng.randint(-9, 9)
    tests = [f"let pair = {name}::new({p}, {q});", f"assert_eq!(pair.{big}(), {max(p, q)});"]
    if swap:
        tests += [f"assert_eq!(pair.swap().{a}, {q});"]
    return Item("\n".join(lines), [(f"test_{name.lower()}", tests)])
