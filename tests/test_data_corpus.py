"""Tests for gathering .rs files from a folder (nanochat_ternary.data.corpus)."""

import pytest

from nanochat_ternary.data.corpus import iter_rust_files
from nanochat_ternary.errors import DataError


def test_iter_rust_files_sorted_and_filtered(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "deep" / "z.rs").write_text("fn z() {}\n")
    (tmp_path / "b" / "m.rs").write_text("fn m() {}\n")
    (tmp_path / "a" / "x.rs").write_text("fn x() { let s = \"é🦀\"; }\n")
    (tmp_path / "top.rs").write_text("fn top() {}\n")
    (tmp_path / "notes.txt").write_text("not rust")
    (tmp_path / "a" / "latin1.rs").write_bytes(b"fn f() { let s = \"\xe9\"; }\n")  # not UTF-8
    (tmp_path / "a" / "big.rs").write_text("// " + "x" * 200 + "\n")
    (tmp_path / "a" / "dangling.rs").symlink_to(tmp_path / "missing.rs")  # unreadable
    got = [(p.relative_to(tmp_path).as_posix(), text) for p, text in iter_rust_files(tmp_path, max_bytes=100)]
    assert [p for p, _ in got] == ["a/x.rs", "b/deep/z.rs", "b/m.rs", "top.rs"]
    assert got[0][1] == "fn x() { let s = \"é🦀\"; }\n"


def test_iter_rust_files_errors(tmp_path):
    with pytest.raises(DataError, match="nope.*does not exist"):
        list(iter_rust_files(tmp_path / "nope"))
    (tmp_path / "readme.md").write_text("# hi")
    with pytest.raises(DataError, match="no .rs files"):
        list(iter_rust_files(tmp_path))
    with pytest.raises(DataError, match="readme.md.*got a file"):
        list(iter_rust_files(tmp_path / "readme.md"))
