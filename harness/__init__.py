"""The harness: everything that makes a run real and that the method never depends on.

dpo.py, cagrad.py, dual_solver.py, raco.py and world.py import nothing from here; train.py, eval.py and the
experiments do.

    run.py            a training run's life around the RACO step: resume, log, checkpoint, signals, divergence
    run_directory.py  --out's promises: one run per directory, nothing mixed, every file written whole
    checkpoints.py    atomic checkpoints and exact resume (torch.distributed.checkpoint, safetensors)
    checks.py         train.py's flags, data and model checked before anything expensive runs
    command_line.py   the commands' contract: one-line errors, exit codes 2 / 1 / 130 / 143; dataclass flags
    errors.py         every error a user's input or a failing run can cause, each printed as one line
    distributed.py    torchrun's processes: joining them, the few reductions outside the gradients
    scale.py          raco.MultiObjectiveBackward's steps composed for torchrun and FSDP2, per-micro-batch duals,
                      the subset Gram, loss weighting's one backward pass
    shared_backward.py  --backward shared: the m per-objective gradients from one backward pass, exactly
    reference.py      pi_ref as a frozen copy, a cache of its log-probs, or LoRA's base model
    models.py         loading a model (checked), LoRA, FSDP2 sharding, gradient checkpointing
    batches.py        preference pairs tokenised into batches for one forward pass; the micro-batch stream
    preference_data.py  pairs from signed / PKU-SafeRLHF / MOA files, local or from the hub
    reporting.py      --report-to tensorboard / wandb, and the curves.png every run ends with
    sampling.py       sampling a policy, the log-probs of its samples, mean scores with errors, KL; world scores
    metrics.py        the reported numbers as pure functions: standard errors, KL, Spearman, exact hypervolumes
"""
