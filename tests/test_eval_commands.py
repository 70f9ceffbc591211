"""`nanochat eval bpb | compile | humaneval-rs` with a tiny trained checkpoint, its GGUF and real rustc."""

import json
import math
import subprocess
import sys

import pytest

from nanochat_ternary.eval.compile import compile_rust, rustc_path
from nanochat_ternary.eval.compile_eval import solvable_prompts
from nanochat_ternary.eval.humaneval import cut_completion, evaluate_completions, load_problems, pass_at_k
from nanochat_ternary.eval.rust_text import close_index, doc_functions

PROBLEMS = "tests/data/humaneval_rs_small.jsonl"
needs_rustc = pytest.mark.skipif(rustc_path() is None, reason="needs rustc")

HELD_OUT = '''use std::collections::HashMap;

/// Count words.
pub fn word_counts(text: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for w in text.split_whitespace() {
        *m.entry(w.to_string()).or_insert(0) += 1; // "}" in a comment
    }
    m
}

/// Needs a type of its own crate, so it cannot be a prompt.
pub fn make() -> Widget {
    Widget::new()
}

/// Braces inside strings and chars: '{' "}".
fn braces() -> (char, &'static str) {
    ('{', "}")
}
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset):
    from nanochat_ternary.config import load_config
    from nanochat_ternary.export.gguf_export import export_checkpoint
    from nanochat_ternary.train.trainer import train

    cfg = load_config("configs/models/tiny.toml", ["model.vocab_size=512", "model.num_layers=1", "model.max_seq_len=128",
                                                   "training.batch_size=2", "training.seq_length=64", "training.num_workers=0",
                                                   "training.total_steps=4", "hardware.device=cpu"])
    run = tmp_path_factory.mktemp("run")
    train(cfg, data=str(tiny_dataset), run_dir=run, quiet=True)
    export_checkpoint(run, run / "model.gguf")
    folder = tmp_path_factory.mktemp("rs")
    (folder / "lib.rs").write_text(HELD_OUT)
    return run, run / "model.gguf", folder


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "nanochat_ternary.cli", *args], capture_output=True, text=True)


def test_bpb_of_checkpoint_and_its_gguf_agree(trained, tmp_path):
    run, gguf, folder = trained
    results = {}
    for name, model in (("ckpt", run), ("gguf", gguf)):
        r = _cli("eval", "bpb", "--model", str(model), "--data", str(folder), "--quiet", "--output", str(tmp_path / f"{name}.json"))
        assert r.returncode == 0, r.stderr
        assert "bpb" in r.stdout
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert results["ckpt"]["kind"] == "checkpoint" and results["gguf"]["kind"] == "gguf"
    assert results["ckpt"]["bytes"] == len(HELD_OUT.encode()) == results["gguf"]["bytes"]
    assert 0 < results["ckpt"]["bpb"] < 20
    assert math.isclose(results["ckpt"]["bpb"], results["gguf"]["bpb"], rel_tol=0.03), results


def test_bpb_on_a_prepared_validation_split(trained, tiny_dataset, tmp_path):
    from nanochat_ternary.eval.bpb import eval_bpb
    from nanochat_ternary.eval.model_access import EvalModel

    r = eval_bpb(EvalModel(trained[0]), str(tiny_dataset), max_tokens=500, progress=False)
    assert r["tokens"] >= 500 and r["documents"] >= 1 and r["bpb"] > 0


def test_function_extraction_and_brace_closing():
    fns = {f.name: f for f in doc_functions(HELD_OUT)}
    assert set(fns) == {"word_counts", "make", "braces"}
    assert fns["word_counts"].prompt.startswith("use std::collections::HashMap;")
    assert fns["word_counts"].body.rstrip().endswith("m\n}")
    assert fns["braces"].body == "\n    ('{', \"}\")\n}"
    assert close_index("fn f() {", " if x { 1 } else { 2 }\n}\nfn g() {}") == 24
    assert close_index("fn f() {", " 'a: loop { break 'a; }") is None


OWN_TYPES = '''use std::fmt;

/// A point.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub x: Meters,
    pub y: Meters,
}

pub type Meters = f64;

pub struct Unrelated {
    pub z: u8,
}

/// Distance from the origin.
#[inline]
pub fn norm(p: Point) -> Meters {
    (p.x * p.x + p.y * p.y).sqrt()
}
'''


def test_prompt_carries_the_types_a_function_names_and_its_attributes():
    (f,) = doc_functions(OWN_TYPES)
    assert f.name == "norm"
    # Point because the signature names it, Meters because Point names it; not Unrelated
    assert "pub struct Point" in f.prompt and "pub type Meters" in f.prompt and "Unrelated" not in f.prompt
    assert f.prompt.index("#[derive(Debug") < f.prompt.index("pub struct Point") < f.prompt.index("/// Distance")
    assert f.prompt.endswith("/// Distance from the origin.\n#[inline]\npub fn norm(p: Point) -> Meters {")


@needs_rustc
def test_prompts_keep_only_functions_that_compile_alone():
    names = [f.name for f in solvable_prompts([HELD_OUT, OWN_TYPES], n=5)]
    assert names == ["word_counts", "braces", "norm"]  # norm compiles with its file's types


@needs_rustc
def test_compile_type_checks_test_modules():
    broken_tests = "pub fn f() -> i32 { 1 }\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn t() { let x: i32 = \"no\"; }\n}\n"
    assert not compile_rust(broken_tests).ok
    assert compile_rust(broken_tests, check_tests=False).ok  # what rustc alone would say
    assert compile_rust(broken_tests.replace('"no"', "1")).ok


@needs_rustc
def test_humaneval_both_formats_pass_and_fail():
    problems = load_problems(PROBLEMS)
    assert [p.harness for p in problems] == ["main"] * 3 + ["test"] * 3
    raw = [json.loads(line) for line in open(PROBLEMS)]
    for p, r in zip(problems, raw):
        good = cut_completion(p, r["canonical_solution"] + ("}\n" if p.harness == "main" else "") + "\nfn junk() {}\n")
        wrong = cut_completion(p, ("    Default::default()\n}\n" if p.harness == "test" else "    Default::default()\n}\n"))
        assert good is not None and "junk" not in good
        results = evaluate_completions(p, [good, wrong, None])
        assert [ok for ok, _ in results] == [True, False, False], (p.name, results)


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 10, 5) == 1.0
    assert math.isclose(pass_at_k(20, 3, 1), 3 / 20)
    assert math.isclose(pass_at_k(5, 2, 2), 1 - math.comb(3, 2) / math.comb(5, 2))


def test_bad_problem_files_name_the_line(tmp_path):
    from nanochat_ternary.errors import DataError

    f = tmp_path / "p.jsonl"
    f.write_text('{"name": "a", "prompt": "fn a() {", "tests": "}", "stop_tokens": []}\n{"oops": 1}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: neither MultiPL-E"):
        load_problems(f)


@needs_rustc
def test_compile_and_humaneval_commands_write_json(trained, tmp_path):
    run, gguf, folder = trained
    r = _cli("eval", "compile", "--model", str(gguf), "--data", str(folder), "-n", "2", "--max-tokens", "24",
             "--output", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stderr
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["n"] == 2 and 0 <= c["rate"] <= 1 and len(c["results"]) == 2
    assert all(row["source"].startswith("use std::collections::HashMap;") or "fn braces" in row["source"] for row in c["results"])
    r = _cli("eval", "humaneval-rs", "--model", str(run), "--problems", PROBLEMS, "-n", "2", "-k", "1,2",
             "--max-tokens", "16", "--output", str(tmp_path / "h.json"))
    assert r.returncode == 0, r.stderr
    h = json.loads((tmp_path / "h.json").read_text())
    assert len(h["results"]) == 6 and {"pass@1", "pass@2"} <= h.keys() and "mean" in r.stdout


def test_mhc_command_reports_routing_and_refuses_a_gguf(trained, tmp_path):
    run, gguf, folder = trained
    r = _cli("eval", "mhc", "--model", str(run), "--data", str(folder), "--max-tokens", "64", "--window", "32",
             "--output", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["n_streams"] == 2 and len(m["layers"]) == 1 and m["tokens"] == 64
    row = m["layers"][0]
    assert row["post_logit_moved"] > 0 and -1 <= row["stream_cosine"] <= 1 + 1e-6 and "stream cos" in r.stdout
    r = _cli("eval", "mhc", "--model", str(gguf), "--output", str(tmp_path / "g.json"))
    assert r.returncode != 0 and "not a GGUF" in r.stderr and not (tmp_path / "g.json").exists()
