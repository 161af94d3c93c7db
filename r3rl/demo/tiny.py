"""Tiny models with a real tokenizer and chat template, built offline.

Used by the tests, the benchmarks and the offline demo: nothing here downloads.
The tokenizer is a byte-level BPE (digits split one per token, as in Qwen/Llama-3)
trained on a fixed corpus, with a ChatML chat template that supports `tools=`
like Qwen2.5's. Models are standard Hugging Face architectures (Qwen2 by default)
saved with `save_pretrained`, so they load with `from_pretrained` like any other.
"""

from __future__ import annotations

from pathlib import Path

from r3rl.environment import prompts

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]

# ChatML, as used by Qwen2/2.5, including its tool-calling system prompt.
CHAT_TEMPLATE = (
    "{% if tools %}"
    "<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% else %}You are a helpful assistant.{% endif %}"
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"
    "<|im_end|>\n"
    "{% elif messages[0]['role'] == 'system' %}"
    "<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if not (message['role'] == 'system' and loop.first) %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    prompts.DEFAULT_REFLECT,
    prompts.DEFAULT_REFLECT_WITH_REASON,
    prompts.DEFAULT_RETRY,
    prompts.DEFAULT_RETRY_NO_REFLECTION,
    "You are a helpful assistant. Use the numbers to create an equation that equals the target. "
    "Put the final answer inside <answer></answer> tags. What is the sum? Let me add the digits one column "
    "at a time, carry the one. I made an arithmetic mistake. I should be more careful. The answer is "
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}} [ ] ( ) + - * / = , . : ; ? !',
    "user\nassistant\nsystem\n tools tool_call name arguments",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 \n\t",
]


def build_tokenizer(vocab_size: int = 600, extra_corpus: list[str] | None = None):
    """A deterministic byte-level BPE tokenizer with a ChatML template (PreTrainedTokenizerFast)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4 + list(extra_corpus or []), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_model(tokenizer, hidden_size: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                intermediate_size: int | None = None, seed: int = 0, arch: str = "qwen2"):
    """A randomly initialised causal LM of a standard architecture (float32)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        arch,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def save_tiny_model(folder: str | Path, seed: int = 0, **model_kwargs) -> Path:
    """Build a tiny random model + tokenizer and save them the Hugging Face way; returns the folder."""
    folder = Path(folder)
    tok = build_tokenizer()
    model = build_model(tok, seed=seed, **model_kwargs)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
