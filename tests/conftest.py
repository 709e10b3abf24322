from __future__ import annotations

import os

import torch

# pytest-xdist runs one worker per core: keep each worker on one thread so they do not oversubscribe the CPU
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
