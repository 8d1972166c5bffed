"""Run by tests/test_distributed.py under torchrun: train the jobs listed in a JSON file, in
order, in this process (one rank of the group torchrun started). Not a test module itself."""

import json
import sys

import torch

from interp.training import train

if __name__ == "__main__":
    torch.set_num_threads(1)
    for job in json.loads(open(sys.argv[1]).read()):
        train(job.get("config"), job.get("overrides", []), resume=job.get("resume"))
