"""Shared test settings."""

import torch

# CI and development machines have 2 cores that other jobs share; one intra-op
# thread avoids OpenMP oversubscription, which slows small ops by an order of magnitude.
torch.set_num_threads(1)
