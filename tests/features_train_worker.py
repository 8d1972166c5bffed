"""Run by tests/test_features_train_distributed.py under torchrun: train the jobs listed in a
JSON file, in order, in this process (one rank of the group torchrun started). Not a test module."""

import json
import sys

import torch

from interp.features.training import run

if __name__ == "__main__":
    torch.set_num_threads(1)
    for job in json.loads(open(sys.argv[1]).read()):
        run(job.get("config"), job.get("overrides", []), resume=job.get("resume"))
