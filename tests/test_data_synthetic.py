"""Tests for the synthetic Rust generator: it must compile, be deterministic and varied."""

import random
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from nanochat_ternary.data.synthetic import MAX_LINES, MIN_LINES, generate_program, generate_programs
from nanochat_ternary.data.synthetic_words import macro_lines, split_args

RUSTC = shutil.which("rustc")
RUSTFMT = shutil.which("rustfmt")


def _rustc(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([RUSTC, "--edition", "2021", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(RUSTC is None, reason="rustc not installed")
def test_programs_compile_with_rustc(tmp_path):
    programs = [p for seed in (0, 1, 2, 3) for p in generate_programs(10, seed=seed)]
    assert len(programs) == 40

    def compile_one(i: int) -> tuple[int, subprocess.CompletedProcess]:
        src = tmp_path / f"p{i}.rs"
        src.write_text(programs[i])
        return i, _rustc(["--crate-type", "lib", "-o", str(tmp_path / f"p{i}.rlib"), str(src)])

    with ThreadPoolExecutor(4) as pool:
        for i, result in pool.map(compile_one, range(len(programs))):
            assert result.returncode == 0, f"program {i} failed to compile:\n{programs[i]}\n{result.stderr}"


@pytest.mark.skipif(RUSTC is None, reason="rustc not installed")
def test_generated_unit_tests_pass(tmp_path):
    """The `#[cfg(test)]` modules compile and their assertions (computed in Python) hold."""
    programs = [p for p in generate_programs(60, seed=7) if "#[test]" in p][:6]
    assert len(programs) == 6

    def run_one(i: int) -> tuple[int, str]:
        src, exe = tmp_path / f"t{i}.rs", tmp_path / f"t{i}"
        src.write_text(programs[i])
        built = _rustc(["--test", "-o", str(exe), str(src)])
        if built.returncode:
            return i, built.stderr
        ran = subprocess.run([str(exe), "-q"], capture_output=True, text=True, timeout=60)
        return i, "" if ran.returncode == 0 else ran.stdout + ran.stderr

    with ThreadPoolExecutor(3) as pool:
        for i, err in pool.map(run_one, range(len(programs))):
            assert not err, f"tests of program {i} failed:\n{programs[i]}\n{err}"


@pytest.mark.skipif(RUSTFMT is None, reason="rustfmt not installed")
def test_programs_are_rustfmt_clean(tmp_path):
    programs = generate_programs(25, seed=11)
    for i, program in enumerate(programs):
        result = subprocess.run([RUSTFMT, "--edition", "2021", "--check"], input=program, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, f"program {i} is not rustfmt-formatted:\n{result.stdout}"


def test_deterministic():
    assert generate_programs(15, seed=5) == generate_programs(15, seed=5)
    assert generate_programs(15, seed=5) != generate_programs(15, seed=6)
    rng = random.Random(5)
    assert [generate_program(rng) for _ in range(15)] == generate_programs(15, seed=5)


def test_variety_and_shape():
    programs = generate_programs(400, seed=3)
    assert len(set(programs)) >= 395
    features = {
        "struct": r"\bstruct \w+", "impl": r"^impl\b", "enum": r"\benum \w+", "match": r"\bmatch \w+",
        "trait": r"\btrait \w+", "for": r"\bfor \w+ in\b", "while": r"\bwhile\b", "loop": r"\bloop \{",
        "question mark": r"\?;", "Option": r"Option<", "Result": r"Result<", "HashMap": r"HashMap<",
        "iterator": r"\.iter\(\)", "map": r"\.map\(", "filter": r"\.filter\(", "collect": r"\.collect\(",
        "sum": r"\.sum\(", "generic": r"<T[:>]", "where": r"^where$", "String": r"\bString\b",
        "Vec": r"\bVec<", "tests": r"#\[cfg\(test\)\]", "test fn": r"#\[test\]", "doc": r"^\s*/// ",
    }
    for name, pattern in features.items():
        hits = sum(1 for p in programs if re.search(pattern, p, re.M))
        assert hits >= 4, f"{name!r} appears in only {hits} of 400 programs"
    for p in programs:
        lines = p.rstrip("\n").split("\n")
        assert MIN_LINES <= len(lines) <= MAX_LINES, p
        assert p.endswith("}\n") and "\t" not in p
        for line in lines:
            assert (len(line) - len(line.lstrip(" "))) % 4 == 0, line
            assert line == line.rstrip(), f"trailing whitespace in {line!r}"


def test_macro_layout_helpers():
    assert split_args('f(a, b), "x, y", [1, 2]') == ["f(a, b)", '"x, y"', "[1, 2]"]
    short = "        assert_eq!(f(1), 2);"
    assert macro_lines(short) == [short]
    long = '        assert_eq!(build_rate(&["raven", "stone", "pixel"]), "raven, stone, stone, pixel");'
    assert macro_lines(long) == ["        assert_eq!(", '            build_rate(&["raven", "stone", "pixel"]),',
                                 '            "raven, stone, stone, pixel"', "        );"]


@pytest.mark.skipif(RUSTC is None, reason="rustc not installed")
def test_small_flavour_is_narrow_and_compiles():
    from nanochat_ternary.data.synthetic_words import ENUMS, NOUNS
    from nanochat_ternary.eval.compile import compile_many

    programs = generate_programs(200, seed=5, flavour="synthetic-small")
    assert all(p.count("\n") <= 24 for p in programs)
    assert not any("#[cfg(test)]" in p for p in programs)
    used = {w for p in programs for w in NOUNS if f" {w}:" in p}
    assert used and used <= set(NOUNS[:6])
    assert len(set(programs)) > 150
    # one item per program (a struct or enum with its impl): a completion is one whole program
    assert all(len(re.findall(r"^(?:pub )?(?:fn|struct|enum) ", p, re.M)) == 1 for p in programs)
    enums = [p for p in programs if "pub enum " in p]
    assert enums
    for p in enums:  # variants in their natural order (Low, Medium, High), match arms likewise
        name = re.search(r"pub enum (\w+)", p).group(1).rstrip("0123456789")
        declared = re.findall(r"^    (\w+),$", p, re.M)
        assert declared == [v for v in ENUMS[name] if v in declared], p
    results = compile_many(programs[:12])
    assert all(r.ok for r in results), [r.stderr for r in results if not r.ok][:1]
    with pytest.raises(ValueError, match="unknown synthetic flavour"):
        generate_programs(1, flavour="nope")
