"""A built-in byte-level tokenizer for presets: one token per byte, no merges, ChatML specials.

Ids 0..255 are the bytes 0..255; the special tokens follow. It is a real
`transformers.PreTrainedTokenizerFast`, so encode / decode / apply_chat_template behave as usual.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_TOKEN = "<|endoftext|>"
BYTE_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def special_token_id(token: str) -> int:
    """Id of one of `SPECIAL_TOKENS` (they come right after the 256 bytes)."""
    return 256 + SPECIAL_TOKENS.index(token)


def _byte_to_char() -> dict[int, str]:
    """The byte-level alphabet: printable bytes map to themselves, the rest to unused code points."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh byte-level tokenizer with eos/pad `<|endoftext|>` and a ChatML chat template."""
    vocab = {char: b for b, char in _byte_to_char().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
                                      additional_special_tokens=list(SPECIAL_TOKENS[1:]))
    wrapped.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped
