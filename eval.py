"""Evaluation: exact scores of sampled responses on the embedded world (more to come: fronts, reward models)."""

import world


def world_scores(model, tokenizer, prompts, num_samples=4, temperature=0.6, seed=0):
    """Mean exact score of each objective, the well-formed rate and mean words over sampled responses.

    prompts: held-out world prompts; num_samples responses each, sampled at `temperature` (the paper uses 0.6).
    """
    responses = world.sample_responses(model, tokenizer, prompts, num_samples, temperature, seed=seed)
    scores = [world.score(p, r) for p, rs in zip(prompts, responses) for r in rs]
    return {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}
