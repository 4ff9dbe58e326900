#!/usr/bin/env python3
"""Writes tests/fixtures/tiny_tokenizer/: a byte-level tokenizer whose 256 ids fit the fixture
models' vocab (ids 0/1 are BOS/EOS, as in DeepSeek's configs), with a DeepSeek-style chat
template, so generation and the eval local-model source can be tested end to end."""
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "tiny_tokenizer"
BOS, EOS, USER, ASSISTANT = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"

# Ids 0-3: specials; ids 4-255: the byte-level symbols of bytes 4..255 (control bytes 0-3 are
# dropped to fit the 256-id vocab). The GPT-2 byte -> unicode map:
bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
cs = bs[:]
n = 0
for b in range(256):
    if b not in bs:
        bs.append(b)
        cs.append(256 + n)
        n += 1
byte_to_sym = {b: chr(c) for b, c in zip(bs, cs)}
keep = list(range(4, 256))
vocab = {BOS: 0, EOS: 1, USER: 2, ASSISTANT: 3}
for b in keep:
    vocab[byte_to_sym[b]] = len(vocab)
assert len(vocab) == 256, len(vocab)

tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, byte_fallback=False, ignore_merges=True))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
tok.decoder = decoders.ByteLevel()
tok.add_special_tokens([BOS, EOS, USER, ASSISTANT])
OUT.mkdir(parents=True, exist_ok=True)
tok.save(str(OUT / "tokenizer.json"))
template = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% else %}{{ '<｜Assistant｜>' + m['content'] + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)
cfg = {"add_bos_token": True, "bos_token": BOS, "eos_token": EOS, "chat_template": template}
(OUT / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n")
print(tok.encode("Hi there!\n").ids, tok.decode(tok.encode("Hi there!").ids))
