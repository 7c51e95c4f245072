"""Loading a saved GraphGPT2 model folder (plain ``save_pretrained`` output, or a LoRA adapter folder)."""
from __future__ import annotations

import copy
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError
from transformers.utils import logging as hf_logging

from data_builders.atomic import replace_dir
from modeling_graphgpt2 import GraphGPT2ForRecommendation
from train.io_utils import temp_sibling

WEIGHTS_FILE = "model.safetensors"


class ModelFolderError(ValueError):
    """A model folder cannot be loaded as the model it claims to be (missing, truncated or mismatched weights)."""


@contextmanager
def no_hf_progress_bars():
    """Hide transformers' per-call "Loading weights" / "Writing model shards" bars (the loops print their own)."""
    active = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if active:
            hf_logging.enable_progress_bar()


def load_model(folder: str | Path, merge_lora: bool = True):
    """A GraphGPT2ForRecommendation from ``folder``; a PEFT adapter folder is loaded onto its base and merged."""
    with no_hf_progress_bars():
        return _load_model(Path(folder), merge_lora)


def _load_model(folder: Path, merge_lora: bool):
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")

    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        base_path = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        base = _from_pretrained(GraphGPT2ForRecommendation, Path(base_path))
        model = PeftModel.from_pretrained(base, str(folder))
        return model.merge_and_unload() if merge_lora else model
    return _from_pretrained(GraphGPT2ForRecommendation, folder)


def _from_pretrained(model_class, folder: Path):
    """``from_pretrained`` from safetensors only (a pickle is never opened), with one named error per failure."""
    if not (folder / "config.json").is_file():
        raise ModelFolderError(f"{folder}: no config.json (not a save_pretrained folder)")
    if not (folder / WEIGHTS_FILE).is_file():
        raise ModelFolderError(f"{folder / WEIGHTS_FILE}: missing; only safetensors weights are loaded (a pickled "
                               "pytorch_model.bin is never opened)")
    try:
        return model_class.from_pretrained(str(folder), use_safetensors=True)
    except (SafetensorError, OSError, EOFError) as err:
        raise ModelFolderError(f"{folder / WEIGHTS_FILE}: unreadable ({str(err).splitlines()[0][:200]}): truncated or not "
                               "a safetensors file") from err
    except (RuntimeError, ValueError, KeyError) as err:  # shapes of config.json and weights disagree
        raise ModelFolderError(f"{folder}: config.json does not fit {WEIGHTS_FILE} ({str(err).splitlines()[0][:300]}): "
                               "an edited config or weights from another model") from err


def save_model(accelerator, model, folder: str | Path) -> None:
    """Save ``model`` atomically (temp folder, then rename) as a plain ``save_pretrained`` folder; all ranks call
    this. A LoRA model is saved merged, with its adapter beside it in ``adapter/``
    (reload: ``load_model(folder / "adapter", merge_lora=False)``). An existing ``folder`` is replaced only when we
    wrote it and it holds nothing else (``data_builders.atomic.replace_dir``)."""
    folder = Path(folder)
    accelerator.wait_for_everyone()
    net = accelerator.unwrap_model(model)
    lora = hasattr(net, "merge_and_unload")
    # every rank takes part: under FSDP the full weights exist only once gathered (one process: the model's own)
    state_dict = None if lora else accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        tmp = temp_sibling(folder)
        try:
            with no_hf_progress_bars():
                if lora:
                    net.save_pretrained(str(tmp / "adapter"))
                    net = copy.deepcopy(net).merge_and_unload()
                net.save_pretrained(str(tmp), state_dict=state_dict)
            replace_dir(tmp, folder, "model folder")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    accelerator.wait_for_everyone()
