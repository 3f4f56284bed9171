import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from tiny import tiny_model, tiny_tokenizer  # noqa: E402


@pytest.fixture
def llama():
    return tiny_model("llama")


@pytest.fixture
def tok():
    return tiny_tokenizer()
