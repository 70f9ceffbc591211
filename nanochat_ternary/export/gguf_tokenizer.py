"""Tokenizer metadata for the GGUF: what llama.cpp needs to tokenize like we do, plus our own JSON.

Why this module exists: the GGUF must carry the tokenizer twice. llama.cpp reads the `gpt2`
(byte-level BPE) form: token strings, token types, merges in rank order, the special-token ids
and the pre-tokenizer name (`llama-bpe`, the llama3 split regex our tokenizer uses). The
project's engine instead rebuilds the exact `Tokenizer` from `tokenizer.huggingface.json`.

When the model's vocabulary is larger than the tokenizer's (a padded embedding), the token list
is padded with `[PAD{i}]` entries of type UNUSED, as llama.cpp's own converter does, because
llama.cpp requires one token entry per embedding row.
"""

from __future__ import annotations

from gguf import GGUFValueType, GGUFWriter, Keys, TokenType

from ..data.tokenizer import CHAT_TEMPLATE, PRE_TOKENIZER_NAME, SPECIAL_TOKENS, Tokenizer
from ..errors import FormatError


def gguf_token_list(tokenizer: Tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and llama.cpp token types (CONTROL for specials, NORMAL, UNUSED padding)."""
    tokens = tokenizer.tokens()
    if len(tokens) > vocab_size:
        raise FormatError(
            f"tokenizer has {len(tokens)} tokens but the model's vocab_size is {vocab_size}: "
            "the tokenizer does not belong to this model"
        )
    specials = set(SPECIAL_TOKENS)
    types = [int(TokenType.CONTROL if t in specials else TokenType.NORMAL) for t in tokens]
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(int(TokenType.UNUSED))
    return tokens, types


def add_tokenizer_metadata(writer: GGUFWriter, tokenizer: Tokenizer, vocab_size: int) -> None:
    """Write the llama.cpp `gpt2` tokenizer keys, the chat template and the HF tokenizer JSON."""
    tokens, types = gguf_token_list(tokenizer, vocab_size)
    writer.add_string(Keys.Tokenizer.MODEL, "gpt2")
    writer.add_string(Keys.Tokenizer.PRE, PRE_TOKENIZER_NAME)
    writer.add_array(Keys.Tokenizer.LIST, tokens)
    writer.add_array(Keys.Tokenizer.TOKEN_TYPE, types)
    # add_array silently drops empty lists; a tokenizer without merges still needs the key
    writer.add_key_value(Keys.Tokenizer.MERGES, tokenizer.merges(), GGUFValueType.ARRAY)
    writer.add_uint32(Keys.Tokenizer.BOS_ID, tokenizer.bos_id)
    writer.add_uint32(Keys.Tokenizer.EOS_ID, tokenizer.eos_id)
    writer.add_uint32(Keys.Tokenizer.EOT_ID, tokenizer.im_end_id)
    # Documents are separated by <|endoftext|> in training, so a prompt that starts a document is
    # preceded by it: llama.cpp prepends BOS (= <|endoftext|>) when asked to add special tokens.
    writer.add_bool(Keys.Tokenizer.ADD_BOS, True)
    writer.add_bool(Keys.Tokenizer.ADD_EOS, False)
    writer.add_string(Keys.Tokenizer.CHAT_TEMPLATE, CHAT_TEMPLATE)
    writer.add_string(Keys.Tokenizer.HF_JSON, tokenizer.to_json())
