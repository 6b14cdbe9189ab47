"""Experiments on the embedded world, each a command run from the repository's root:

    python experiments/pareto.py       the Pareto sweep: methods x weights x seeds against the world's exact front
    python experiments/frontier.py     score against KL: each method's frontier over learning rates and checkpoints
    python experiments/conflict.py     LW, CAGrad and RACO against the conflict between the objectives' data
    python experiments/bench.py        solver time, the whole step's time and memory (per-objective and shared
                                       backward passes), the subset-Gram step
    python experiments/world_build.py  the world's tokenizer, tiny model and preference pairs, built from world.py

sweeps.py holds what the three sweeps share. (`python -m experiments.pareto` works as well.) They use the core and
the harness; nothing imports them.
"""
