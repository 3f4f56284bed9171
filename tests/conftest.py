import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from tiny import tiny_model, tiny_tokenizer  # noqa: E402


@pytest.fixture
def llama():
    return tiny_model("llama")


@pytest.fixture
def tok():
    return tiny_tokenizer()


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
