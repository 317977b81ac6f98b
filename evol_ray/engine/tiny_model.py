"""Build a small random-weight Llama and its tokenizer on local disk, with nothing downloaded.

Used by the tests and the throughput benchmark (its size is a parameter) and handy for a smoke test
on a laptop: `python -m evol_ray.tiny_model DIR`. The vLLM CPU attention kernels need a head size of
64 or more, so `hidden / heads` is kept at 64 by default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS = [
    "Write a short poem about the sea and the wind.",
    "Explain how a binary search works and give its complexity.",
    "Summarize the main causes of the industrial revolution.",
    "Rewrite the instruction into a harder version with one more constraint.",
    "List three ways to reduce the memory use of a Python program.",
    "What is the difference between a process and a thread?",
    "Translate the sentence into French and explain the grammar.",
    "Give a recipe for bread that uses no yeast, in a table.",
    "Equal. Not Equal. Sorry, I cannot help with that.",
    "<|user|> <|assistant|> <|system|> #Original Instruction# #Rewritten Instruction#",
    "0123456789 {}[]()<>:;,.!?'\"-_=+*/\\|@#$%^&~`",
]


def build_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_random_llama(path: str | Path, hidden: int = 128, layers: int = 2, heads: int = 2,
                       kv_heads: int = 1, intermediate: int | None = None, vocab_size: int = 512,
                       max_positions: int = 4096, seed: int = 0) -> Path:
    """Save a random Llama and its tokenizer under `path`; returns the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():  # seed this build only; the caller's RNG state is untouched
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("path")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    a = p.parse_args()
    print(build_random_llama(a.path, hidden=a.hidden, layers=a.layers, heads=a.heads))


if __name__ == "__main__":
    main()
