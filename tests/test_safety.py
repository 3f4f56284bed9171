"""safety: a bad device name or an absent CUDA is refused by the checker, the config and the model loader."""
import pytest
import torch
from tiny import tiny_model

from split_plugin import SplitPluginError
from split_plugin.config import TrainConfig
from split_plugin.safety import check_device

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_device_names_are_checked():
    model = tiny_model("llama")
    with pytest.raises(SplitPluginError, match="device 'gpu' is not a device name"):
        check_device("gpu", model)
    with pytest.raises(SplitPluginError, match="device 'gpu' is not a device name"):
        TrainConfig(layer=1, device="gpu")
    if not torch.cuda.is_available():
        from split_plugin.models import load_default_model
        with pytest.raises(SplitPluginError, match="CUDA is not available"):
            load_default_model(device="cuda:0")  # refused before any conversion or load
