"""split-plugin: SPLIT steering and the unified weight-update view, as an EasyEdit plugin."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
VERSION = {}
exec((ROOT / "split_plugin" / "version.py").read_text(), VERSION)

setup(
    name="split-plugin",
    version=VERSION["__version__"],
    description="SPLIT steering (preference + utility) and the unified dynamic-weight-update view "
    "of steering, LoRA and local weight edits, as a plugin for EasyEdit",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["split_plugin", "split_plugin.*"]),
    package_data={"split_plugin": ["datasets/*.md", "datasets/*.txt", "datasets/*/*.jsonl",
                                 "presets/*/*.yaml", "easyedit/configs/*.yaml"]},
    include_package_data=True,
    install_requires=[
        # torch is pinned by the README's set-up (CPU build); any torch >= 2.4 works here.
        "torch>=2.4",
        "transformers>=4.56",
        "peft>=0.17",
        "safetensors>=0.4",
        "pyyaml>=6",
        "tqdm>=4.60",
        "numpy>=1.24",
        "scipy>=1.10",
        "matplotlib>=3.7",
        # the embedded model is a GGUF file; transformers needs these to read it
        "gguf>=0.10",
        "accelerate>=1.0",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "pandas>=2", "pyarrow>=14"],
        "data": ["pandas>=2", "pyarrow>=14"],
    },
    entry_points={"console_scripts": ["split-steer=split_plugin.cli:main"]},
)
