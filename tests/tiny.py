"""The tests' tiny builders: a word-level tokenizer, a Llama of a few thousand parameters, and the embedded world in
miniature. Built here, in the hub's file format, without a hub."""
import json
import random

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import world
import world_build

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]  # ids 0, 1, 2, 3
WORDS = SPECIALS + ("hello world good bad short long answer question the cat dog sat ran on a mat fast slow yes no "
                    "why how is it very").split() + [f"w{i}" for i in range(20)]


def word_tokenizer(bos=True, pad=True):
    """Whitespace words; like Llama's, it puts <bos> in front of text (bos=False: like Qwen's, no BOS at all), and
    without a pad token (pad=False) the code under test must fall back to EOS."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    specials = dict(eos_token="<eos>", unk_token="<unk>", **({"bos_token": "<bos>"} if bos else {}),
                    **({"pad_token": "<pad>"} if pad else {}))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def tiny_config(**overrides):
    config = dict(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1,
                  eos_token_id=2, pad_token_id=0)
    return LlamaConfig(**{**config, **overrides})


def tiny_llama(seed=0, **overrides):
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(**overrides))


def write_tiny_world(root):
    """The embedded world in miniature, no pretraining: its tokenizer, a random 1-layer model, and signed pairs of
    the writer's responses labelled by the exact scores (world_train.jsonl, world_eval.jsonl) under root."""
    rng = random.Random(0)
    texts = [p + " " + world_build.write_response(p, rng) for p in world.make_prompts(200, 0)]
    tokenizer = world_build.train_tokenizer(texts)
    torch.manual_seed(0)
    model = world_build.make_model(tokenizer, hidden=16, layers=1, heads=2)
    model.save_pretrained(root / "world-tiny")
    tokenizer.save_pretrained(root / "world-tiny")
    for name, prompts in (("world_train", world.make_prompts(48, 1)), ("world_eval", world.eval_prompts(24, 2))):
        rows = []
        for p in prompts:
            a, b = world_build.write_response(p, rng), world_build.write_response(p, rng)
            labels = world.preference_labels(world.score(p, a), world.score(p, b), 0, rng)
            rows.append({"prompt": p, "response_a": a, "response_b": b,
                         **{f"raco_s_{k}": v for k, v in labels.items()}})
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model": str(root / "world-tiny"), "train": str(root / "world_train.jsonl"),
            "eval": str(root / "world_eval.jsonl")}
