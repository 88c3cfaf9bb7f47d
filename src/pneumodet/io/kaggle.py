"""Download the RSNA Pneumonia Detection Challenge with the Kaggle API, and check what arrived.

The ``kaggle`` package authenticates when imported and exits the process without credentials,
so credentials and the network are checked here first: without either, one clear line within a
second instead of a traceback or a hang.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from pneumodet.errors import UserError
from pneumodet.files import atomic_path
from pneumodet.io.layout import (
    CLASS_INFO,
    SAMPLE_SUBMISSION,
    TEST_IMAGES,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    image_files,
)
from pneumodet.network import can_reach

COMPETITION = "rsna-pneumonia-detection-challenge"
KAGGLE_HOST = "www.kaggle.com"
#: what a complete download holds: file or folder -> expected count of .dcm files (None: a file)
EXPECTED = {TRAIN_LABELS: None, CLASS_INFO: None, SAMPLE_SUBMISSION: None, TRAIN_IMAGES: 26684, TEST_IMAGES: 3000}
HOW_TO = (
    "put kaggle.json (kaggle.com > Settings > API > Create New Token) in ~/.kaggle/ "
    "(or set KAGGLE_USERNAME and KAGGLE_KEY), and accept the competition rules at "
    f"https://www.kaggle.com/c/{COMPETITION}/rules"
)


def find_credentials(environ: dict | None = None) -> str | None:
    """Return where Kaggle credentials were found (an env var or a kaggle.json path), else None."""
    env = os.environ if environ is None else environ
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    config_dir = Path(env.get("KAGGLE_CONFIG_DIR") or Path(env.get("HOME", "~")).expanduser() / ".kaggle")
    path = config_dir / "kaggle.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            raise UserError(f"{path}: not valid JSON; download a new token ({HOW_TO})") from None
        if data.get("username") and data.get("key"):
            return str(path)
        raise UserError(f"{path}: needs 'username' and 'key'; {HOW_TO}")
    return None



def check_complete(dest: str | Path) -> list[str]:
    """Return what is missing or short in a downloaded competition folder (empty: complete)."""
    dest = Path(dest)
    missing = []
    for name, count in EXPECTED.items():
        path = dest / name
        if count is None:
            if not path.is_file() or path.stat().st_size == 0:
                missing.append(name)
        else:
            found = len(image_files(path)[0]) if path.is_dir() else 0
            if found < count:
                missing.append(f"{name} ({found}/{count} .dcm files)")
    return missing


def extract(archive: str | Path, dest: str | Path) -> None:
    """Unzip ``archive`` into ``dest`` member by member (atomic per file) and delete the archive."""
    dest = Path(dest).resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                target = (dest / member.filename).resolve()
                if not target.is_relative_to(dest):
                    raise UserError(f"{archive}: member {member.filename!r} escapes the folder")
                if member.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if target.exists() and target.stat().st_size == member.file_size:
                    continue
                with atomic_path(target) as tmp, zf.open(member) as src, open(tmp, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
    except zipfile.BadZipFile:
        raise UserError(f"{archive}: not a valid zip archive (interrupted download?); delete it and retry") from None
    Path(archive).unlink()


def download_competition(dest: str | Path, competition: str = COMPETITION) -> Path:
    """Download and unzip the competition into ``dest``; skip it when already complete."""
    dest = Path(dest)
    if not check_complete(dest):
        return dest
    if find_credentials() is None:
        raise UserError(f"no Kaggle credentials: {HOW_TO}")
    if not can_reach(KAGGLE_HOST):
        raise UserError(f"cannot reach {KAGGLE_HOST} (offline?): download needs the network; "
                        f"or copy the competition files into {dest}")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        api.authenticate()
        api.competition_download_files(competition, path=str(dest), quiet=False)
    except SystemExit as exc:  # the kaggle package exits on bad credentials
        raise UserError(f"Kaggle refused the credentials ({exc}); {HOW_TO}") from None
    except Exception as exc:
        message = str(exc)
        if "403" in message or "Forbidden" in message:
            raise UserError(f"Kaggle said 403 Forbidden: accept the rules at "
                            f"https://www.kaggle.com/c/{competition}/rules") from None
        raise UserError(f"Kaggle download failed: {message.splitlines()[0] if message else exc!r}") from None
    for archive in sorted(dest.glob("*.zip")):
        extract(archive, dest)
    missing = check_complete(dest)
    if missing:
        raise UserError(f"{dest}: download incomplete, missing {', '.join(missing)}; run it again")
    return dest
