"""The suite's environment and its shared fixtures. Environment and thread settings live here and nowhere else."""
import json
import os

# Hub look-ups retry for ~40 s without a network; every test works on local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

# The models here are tiny: a second thread buys ~15% on an idle machine and costs 5-70x when another process
# shares the two cores (the multi-process test, a sweep running beside the suite).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama and tokenizer saved in Hugging Face format: what a hub download leaves on disk."""
    from tiny import tiny_llama, word_tokenizer
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_llama().save_pretrained(path, safe_serialization=True)
    word_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory):
    """Eight signed pairs over the tiny vocabulary: y_a preferred by 'good', preferred or tied by 'short'."""
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = [{"prompt": "question hello", "response_a": "good answer", "response_b": "bad long long answer",
             "raco_s_good": 1, "raco_s_short": 1 if i % 2 else 0} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The embedded world in miniature (tiny.write_tiny_world): {"model", "train", "eval"} paths."""
    from tiny import write_tiny_world
    return write_tiny_world(tmp_path_factory.mktemp("world"))
