"""The tests' tiny builders: a word-level tokenizer, a Llama of a few thousand parameters, and the embedded world in
miniature. Built here, in the hub's file format, without a hub."""
import json
import os
import random

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import world
from experiments import world_build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: commands run from here

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]  # ids 0, 1, 2, 3
WORDS = SPECIALS + ("hello world good bad short long answer question the cat dog sat ran on a mat fast slow yes no "
                    "why how is it very").split() + [f"w{i}" for i in range(20)]


def word_tokenizer(bos=True, pad=True, words=WORDS):
    """Whitespace words; like Llama's, it puts <bos> in front of text (bos=False: like Qwen's, no BOS at all), and
    without a pad token (pad=False) the code under test must fall back to EOS. words: the vocabulary, in id order."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
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


def crash_after(calls, function):
    """function, but raising RuntimeError("power cut") from its (calls + 1)-th call on: a run that dies mid-way."""
    made = []

    def crashing(*args):
        made.append(1)
        if len(made) > calls:
            raise RuntimeError("power cut")
        return function(*args)
    return crashing


# Two objectives on a tiny float64 Llama that pull the same logits different ways: raco.py's and harness/scale.py's
# tests check the direction in .grad against these, computed independently.

def conflicting_model(seed=0):
    # no pad token: nn.Embedding zeroes the gradient of the padding row, which finite differences would see
    return tiny_llama(seed, vocab_size=40, num_hidden_layers=2, pad_token_id=None).double()


def token_batch(seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 40, (3, 10), generator=generator)


def conflicting_losses(model, input_ids):
    """Two objectives that pull the same logits different ways: raise the log-likelihood of the sequences, or of the
    same prompts (their first 3 tokens) continued by token 7 everywhere. Like DPO's, both read the model only through
    the log-probs of whole responses (the tokens after the prompt): returns (losses (2,), logps (6,): the 3 sequences,
    then their token-7 versions), as raco.MultiObjectiveBackward.backward takes them."""
    sevens = input_ids.clone()
    sevens[:, 3:] = 7
    rows = torch.cat([input_ids, sevens])
    token_logps = model(input_ids=rows).logits[:, :-1].log_softmax(-1).gather(-1, rows[:, 1:, None]).squeeze(-1)
    logps = token_logps[:, 2:].sum(-1)  # the tokens after the prompt, in the model's dtype (float64)
    return torch.stack([-logps[:3].mean(), -logps[3:].mean()]), logps


def flat_gradients(model, input_ids):
    """Independent reference: one backward per loss, every gradient flattened into one vector: (m, n)."""
    rows = []
    for i in range(2):
        model.zero_grad()
        conflicting_losses(model, input_ids)[0][i].backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    model.zero_grad()
    return torch.stack(rows)


def grad_vector(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])
