import os

# Hub look-ups retry for ~40 s without a network; every test works on local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
