"""Shared test setup.

The unit tests use tiny tensors, where torch's thread pool costs more than it saves (on a busy
2-core machine a 400x2 softmax took 20 ms with 2 threads): run them on one thread. No test may
reach a model hub: HF_HUB_OFFLINE is set before transformers or diffusers are imported.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
