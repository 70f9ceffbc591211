"""nanochat-ternary: ternary (1.58-bit) language models for Rust code, end to end."""

__version__ = "0.1.0"
