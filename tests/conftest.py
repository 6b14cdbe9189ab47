import os

# Hub look-ups retry for ~40 s without a network; every test works on local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

# The models here are tiny: a second thread buys ~15% on an idle machine and costs 5-70x when another process
# shares the two cores (the multi-process test, a sweep running beside the suite).
torch.set_num_threads(1)
