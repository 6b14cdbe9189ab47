"""harness/batches.py: pairs tokenised for one forward pass, the BOS once, truncation that keeps both responses on
the same prompt, and the micro-batch stream. (That the prompt and padding tokens do not count in the log-probs is
dpo.py's claim, tested in tests/method/test_dpo.py.)"""
import pytest

from harness.batches import batches, tokenize_pairs
from tiny import word_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]

def test_bos_added_once(tokenizer):
    batch = tokenize_pairs(tokenizer, ["<bos> why"], ["yes"], ["no"])
    assert batch["input_ids"][0].tolist()[:2] == [tokenizer.bos_token_id, ids_of(tokenizer, "why")[0]]
    no_bos = word_tokenizer(bos=False, pad=False)  # Qwen-like: no BOS, and pad falls back to EOS
    batch = tokenize_pairs(no_bos, ["why"], ["yes"], ["no no"])
    assert batch["input_ids"].tolist() == [ids_of(no_bos, "why yes") + [2, 2], ids_of(no_bos, "why no no") + [2]]
    assert batch["completion_mask"].tolist() == [[0, 1, 1, 0], [0, 1, 1, 1]]

# ----------------------------------------------------------------------------- truncation

def test_prompt_truncated_from_the_left_and_shared_by_both_responses(tokenizer):
    prompt = " ".join(f"w{i}" for i in range(20))  # 21 tokens with BOS
    batch = tokenize_pairs(tokenizer, [prompt], ["yes"], ["no no"], max_length=10, max_prompt_length=6)
    keep = [tokenizer.bos_token_id] + ids_of(tokenizer, "w15 w16 w17 w18 w19")  # BOS survives, end kept
    assert batch["input_ids"][0, :6].tolist() == keep and batch["input_ids"][1, :6].tolist() == keep
    assert batch["completion_mask"].sum(-1).tolist() == [2, 3]  # responses fit untouched, EOS included
    assert batch["num_truncated"] == 2


def test_response_cut_at_the_end_never_empty(tokenizer):
    long = " ".join(f"w{i}" for i in range(15))
    batch = tokenize_pairs(tokenizer, ["why"], [long], ["yes"], max_length=8, max_prompt_length=4)
    assert batch["input_ids"][0].tolist() == [tokenizer.bos_token_id] + ids_of(tokenizer, "why w0 w1 w2 w3 w4 w5")
    assert batch["num_truncated"] == 1  # only y_a lost tokens (its EOS too); the short prompt was not touched
    # long prompt AND long response: the prompt gives way first, the response still keeps max_length - 4 tokens
    batch = tokenize_pairs(tokenizer, [long], [long], ["yes"], max_length=8, max_prompt_length=4)
    assert batch["completion_mask"].sum(-1).tolist() == [4, 2] and batch["input_ids"].shape[1] == 8
    assert batch["num_truncated"] == 2


def test_impossible_truncation_raises(tokenizer):
    with pytest.raises(ValueError, match="max_prompt_length"):
        tokenize_pairs(tokenizer, ["why"], ["yes"], ["no"], max_length=8, max_prompt_length=8)



def test_the_stream_reshuffles_every_epoch_and_gives_each_process_its_own_slice():
    stream = batches(10, 3, seed=0)
    epoch = [next(stream) for _ in range(3)]  # 10 pairs: three batches of 3, the last pair of the epoch dropped
    again = [next(stream) for _ in range(3)]
    assert all(len(b) == 3 for b in epoch + again) and len({i for b in epoch for i in b}) == 9
    assert epoch != again  # a fresh shuffle
    assert [next(batches(10, 3, seed=0)) for _ in range(1)] == [epoch[0]]  # seeded
    first, second = batches(10, 2, seed=1, rank=0, world_size=2), batches(10, 2, seed=1, rank=1, world_size=2)
    mine, theirs = [next(first) for _ in range(2)], [next(second) for _ in range(2)]
    assert not {i for b in mine for i in b} & {i for b in theirs for i in b}  # disjoint slices of one shuffle
