"""Shared test settings."""

import torch

# The suite runs thousands of small tensor operations; on a 2-core machine a second intra-op
# thread only adds synchronization, and under any other load every op waits for a preempted
# thread (tests then run tens of times slower). One thread keeps the suite fast and steady.
torch.set_num_threads(1)
