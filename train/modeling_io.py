"""Loading a saved GraphGPT2 model folder (plain ``save_pretrained`` output, or a LoRA adapter folder)."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from transformers.utils import logging as hf_logging


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
    from modeling_graphgpt2 import GraphGPT2ForRecommendation

    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        base_path = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        base = GraphGPT2ForRecommendation.from_pretrained(base_path)
        model = PeftModel.from_pretrained(base, str(folder))
        return model.merge_and_unload() if merge_lora else model
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json (not a save_pretrained folder)")
    return GraphGPT2ForRecommendation.from_pretrained(str(folder))


def save_model(accelerator, model, folder: str | Path) -> None:
    """Save ``model`` atomically (temp folder, then rename) as a plain ``save_pretrained`` folder; all ranks call
    this. A LoRA model is saved merged, with its adapter beside it in ``adapter/``
    (reload: ``load_model(folder / "adapter", merge_lora=False)``)."""
    import copy
    import shutil

    from data_builders.atomic import replace_dir

    folder = Path(folder)
    accelerator.wait_for_everyone()
    net = accelerator.unwrap_model(model)
    lora = hasattr(net, "merge_and_unload")
    # every rank takes part: under FSDP the full weights exist only once gathered (one process: the model's own)
    state_dict = None if lora else accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        tmp = folder.with_name(f".tmp-{folder.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        if lora:
            net.save_pretrained(str(tmp / "adapter"))
            net = copy.deepcopy(net).merge_and_unload()
        net.save_pretrained(str(tmp), state_dict=state_dict)
        replace_dir(tmp, folder)
    accelerator.wait_for_everyone()
