"""Tokenizer: GPT-2 byte-level BPE (or one trained on the corpus) plus atomic ``user_<i>`` / ``item_<j>`` tokens.

DESIGN.md section 1: ``id(user_u) = base_vocab_size + u`` and ``id(item_j) = base_vocab_size + U + j``. All ID
tokens are added in ONE ``add_tokens`` call (one call per token is superlinear: 58 s for 20k), non-special
(``decode(skip_special_tokens=True)`` would otherwise delete them), users first, then items.

Spacing: each ID token is an ``AddedToken(lstrip=True, single_word=True, normalized=False)``:
- ``lstrip`` absorbs the space before an ID token, so ``"with item_1 item_2"`` is ``... with, item_1, item_2``
  instead of one stray ``'Ġ'`` token per item (reference-code-notes section 2 drops these spaces the same way);
- ``single_word`` keeps ``"xitem_5"`` / ``"item_5x"`` in free text as plain BPE text.
Because the tokens are registered in the saved ``tokenizer.json``, ``AutoTokenizer.from_pretrained(folder)``
gives exactly the ids the builder wrote. Known cosmetic caveat: ``decode`` does not restore the absorbed
spaces (``"withitem_1item_2"``); rows keep their original ``prompt``/``main`` strings for display.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Iterable
from urllib.parse import urlparse

from huggingface_hub import constants
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, GPT2Tokenizer, PreTrainedTokenizerFast

from modeling_graphgpt2.folder_layout import TOKENIZER_FILE

from .atomic import make_temp_dir
from .records import item_token, user_token

DEFAULT_GPT2_DIR = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "gpt2"
EOS_TOKEN = "<|endoftext|>"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # "gpt2", "org/name": what is tried on the Hub


def load_base_tokenizer(source: str | os.PathLike | None = None):
    """The GPT-2 byte-level BPE from a local folder with vocab.json + merges.txt, or a Hub name (e.g. "gpt2")."""

    source = DEFAULT_GPT2_DIR if source is None else source
    p = Path(source)
    if p.is_dir():
        if (p / TOKENIZER_FILE).is_file():
            tok = AutoTokenizer.from_pretrained(str(p))
        elif (p / "vocab.json").is_file() and (p / "merges.txt").is_file():
            tok = GPT2Tokenizer.from_pretrained(str(p))
        else:
            raise FileNotFoundError(f"{p}: tokenizer folder needs vocab.json + merges.txt (or {TOKENIZER_FILE})")
    elif p.exists():
        raise NotADirectoryError(f"--tokenizer {p}: is a file; give the folder holding vocab.json + merges.txt")
    elif not HUB_ID.fullmatch(str(source)):
        raise FileNotFoundError(f"--tokenizer {source}: no such folder (and not a Hub name such as gpt2 or org/name)")
    else:
        tok = _hub_tokenizer(str(source))
    if tok.eos_token is None:
        tok.eos_token = EOS_TOKEN
    return tok


def _hub_tokenizer(name: str):
    """A Hub tokenizer from the local cache, else downloaded; unreachable Hub: a named error at once, not a
    minute of retries."""

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except OSError:
        pass
    host = urlparse(constants.ENDPOINT).hostname or ""
    reachable = not constants.HF_HUB_OFFLINE
    if reachable:
        try:
            socket.create_connection((host, 443), timeout=3).close()
        except OSError:
            reachable = False
    if not reachable:
        raise FileNotFoundError(f"--tokenizer {name}: no such local folder, not in the Hugging Face cache, and the Hub "
                                f"({host}) cannot be reached; pass a folder holding vocab.json + merges.txt")
    return AutoTokenizer.from_pretrained(name)


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2):
    """A GPT-2-style byte-level BPE trained on ``texts`` (no download; seconds). ``<|endoftext|>`` is id 0."""

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, unk_token=None)


def add_id_tokens(tokenizer, num_users: int, num_items: int) -> int:
    """Add ``user_0..user_{U-1}`` then ``item_0..item_{I-1}`` in one call; returns ``base_vocab_size``."""
    base = len(tokenizer)
    names = [user_token(u) for u in range(num_users)] + [item_token(j) for j in range(num_items)]
    vocab = tokenizer.get_vocab()
    clash = [n for n in names[:3] + names[-3:] if n in vocab]
    if clash:
        raise ValueError(f"tokenizer already has ID tokens {clash}: pass a base tokenizer without user_/item_ tokens")
    added = tokenizer.add_tokens(
        [AddedToken(n, lstrip=True, rstrip=False, single_word=True, normalized=False) for n in names], special_tokens=False
    )
    if added != len(names):
        raise ValueError(f"added {added} of {len(names)} ID tokens; some already existed in the vocabulary")
    check_id_layout(tokenizer, base, num_users, num_items)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # right padding; labels are -100 and attention 0 there
    return base


def check_id_layout(tokenizer, base_vocab_size: int, num_users: int, num_items: int) -> None:
    """Assert the DESIGN.md id layout on the first/last user and item (and the total size)."""
    if len(tokenizer) != base_vocab_size + num_users + num_items:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens, expected base {base_vocab_size} + {num_users} users + {num_items} items"
        )
    probes = []
    if num_users:
        probes += [(user_token(0), base_vocab_size), (user_token(num_users - 1), base_vocab_size + num_users - 1)]
    if num_items:
        probes += [
            (item_token(0), base_vocab_size + num_users),
            (item_token(num_items - 1), base_vocab_size + num_users + num_items - 1),
        ]
    for tok, want in probes:
        got = tokenizer.convert_tokens_to_ids(tok)
        if got != want:
            raise ValueError(f"token {tok} has id {got}, expected {want} (base_vocab_size + node index)")


def build_tokenizer(num_users: int, num_items: int, source: str | os.PathLike | None = None, train_texts=None, vocab_size: int = 4096):
    """GPT-2 BPE from ``source`` (default ../shared/tokenizers/gpt2), or a trained BPE when ``train_texts`` is given.

    Returns ``(tokenizer, base_vocab_size)`` with the ID tokens added.
    """
    tok = train_byte_level_bpe(train_texts, vocab_size) if train_texts is not None else load_base_tokenizer(source)
    base = add_id_tokens(tok, num_users, num_items)
    return tok, base


def tokenizer_sha256(directory: str | os.PathLike) -> str:
    """Hash of ``tokenizer.json`` (vocab, merges, added tokens, pre-tokenizer): what decides the ids."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_tokenizer(tokenizer, directory: str | os.PathLike) -> str:
    """Save atomically (temp folder then rename) and return the sha256 of the saved tokenizer.json."""
    d = Path(directory)
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(d.parent, prefix=d.name + ".tmp")
    try:
        tokenizer.save_pretrained(str(tmp))
        if d.exists():
            shutil.rmtree(d)
        os.replace(tmp, d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tokenizer_sha256(d)


def load_tokenizer(directory: str | os.PathLike, expected_sha256: str | None = None):
    """Load a dataset folder's tokenizer; with ``expected_sha256`` refuse a tokenizer from another build."""

    d = Path(directory)
    if expected_sha256 is not None:
        got = tokenizer_sha256(d)
        if got != expected_sha256:
            raise ValueError(f"{d / TOKENIZER_FILE}: sha256 {got} does not match the manifest's {expected_sha256}: tokenizer from another build")
    return AutoTokenizer.from_pretrained(str(d))
