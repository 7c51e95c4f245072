"""Test-wide settings: no network, a private Hugging Face home, the shared data paths."""
import os
import tempfile
from pathlib import Path

# Offline Hub and a throw-away cache before any HF import.
_HF_HOME = tempfile.mkdtemp(prefix="graphgpt2-hf-home-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_CACHE"] = os.path.join(_HF_HOME, "hub")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_HF_HOME, "datasets")
os.environ["HF_MODULES_CACHE"] = os.path.join(_HF_HOME, "modules")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

SHARED = ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"
GPT2_TOKENIZER_DIR = SHARED / "tokenizers" / "gpt2"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED_DATA}; tests expect ../shared/data beside the checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir() -> Path:
    if not (GPT2_TOKENIZER_DIR / "vocab.json").is_file():
        pytest.fail(f"GPT-2 tokenizer files not found in {GPT2_TOKENIZER_DIR}")
    return GPT2_TOKENIZER_DIR
