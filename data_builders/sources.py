"""Official download addresses of the Amazon review dumps, and a fetch that never leaves half a file.

`fetch("Musical_Instruments", "2014", "data/mi")` returns a folder `read_source` can read. Files already
present are used as they are. Offline (HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1, `offline=True`, or a
failed download) the error names every missing file, its address and where to put it.
"""
from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from .atomic import make_temp_file

URLS: dict[str, dict[str, str]] = {
    # McAuley lab "Amazon product data" (2014): 5-core reviews and full metadata per category
    "2014": {
        "reviews": "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_{cat}_5.json.gz",
        "meta": "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/meta_{cat}.json.gz",
    },
    # Ni, Li & McAuley "Amazon review data (2018)": 5-core reviews and metadata per category
    "2018": {
        "reviews": "https://jmcauley.ucsd.edu/data/amazon_v2/categoryFilesSmall/{cat}_5.json.gz",
        "meta": "https://jmcauley.ucsd.edu/data/amazon_v2/metaFiles2/meta_{cat}.json.gz",
    },
}


class DownloadUnavailable(RuntimeError):
    """A needed raw file is absent and could not be downloaded; the message says what to put where."""


def source_files(category: str, release: str) -> dict[str, tuple[str, str]]:
    """{"reviews"|"meta": (file name, URL)} of one category of one release ("2014" or "2018")."""
    release = str(release).removeprefix("amazon")
    if release not in URLS:
        raise ValueError(f"unknown release {release!r}; expected one of {sorted(URLS)}")
    if not category or "/" in category:
        raise ValueError(f"category must be a file-name part such as 'Musical_Instruments', got {category!r}")
    out = {}
    for kind, template in URLS[release].items():
        url = template.format(cat=category)
        out[kind] = (url.rsplit("/", 1)[1], url)
    return out


def fetch(
    category: str,
    release: str,
    dest: str | Path,
    offline: bool | None = None,
    base_url: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Make sure the reviews and metadata files of `category` are in `dest`, downloading what is absent.

    Args:
        category: the dump's category part, e.g. "Musical_Instruments" or "Gift_Cards".
        release: "2014" or "2018".
        dest: folder to hold the files (created if needed).
        offline: never try the network; default from HF_HUB_OFFLINE / HF_DATASETS_OFFLINE.
        base_url: replace the official folder address (mirrors, tests); the file name is appended.
        timeout: seconds per connection attempt.

    Returns:
        `dest` as a Path, ready for `read_source(dest)`.

    Raises:
        DownloadUnavailable: a file is missing and cannot be downloaded; the message lists each missing
            file with its address and its expected local path.
    """
    dest = Path(dest)
    if offline is None:
        offline = any(os.environ.get(v, "0").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    wanted = source_files(category, release)
    missing = []
    for kind, (name, url) in wanted.items():
        if base_url is not None:
            url = base_url.rstrip("/") + "/" + name
        target = dest / name
        if target.exists():
            continue
        if offline:
            missing.append((name, url, target, "offline mode"))
            continue
        try:
            _download(url, target, timeout)
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            missing.append((name, url, target, str(err)))
    if missing:
        lines = [f"  {name}: download {url} and put it at {target} ({why})" for name, url, target, why in missing]
        raise DownloadUnavailable(
            f"Amazon {release} '{category}' files are not available locally and could not be downloaded:\n"
            + "\n".join(lines)
        )
    return dest


def _download(url: str, target: Path, timeout: float) -> None:
    """Stream `url` to a temporary file beside `target`, then rename it into place (atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_file(target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out, length=1 << 20)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
