"""SubRip (``.srt``) subtitles: parse cues and keep the lines within a sampled time range (Video-MME's
"with subtitles" setting).

A cue is ``index`` / ``HH:MM:SS,mmm --> HH:MM:SS,mmm`` / one or more text lines / a blank line. The parser
accepts a UTF-8 BOM, CRLF line ends, ``.`` instead of ``,`` before the milliseconds, missing index lines and
position tags after the times, and strips formatting tags (``<i>``, ``<font ...>``, ``{\\an8}``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from spikelight.datamodules.base import DataError

__all__ = ["SubtitleCue", "parse_srt", "read_srt", "subtitles_in_range", "find_subtitles"]

_TIME = r"(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})"
_ARROW = re.compile(_TIME + r"\s*-->\s*" + _TIME)
_TAGS = re.compile(r"<[^>]*>|\{\\[^}]*\}")


@dataclass(frozen=True)
class SubtitleCue:
    """One subtitle: shown from ``start`` to ``end`` seconds."""

    start: float
    end: float
    text: str


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000.0


def parse_srt(text: str, *, source: str | Path | None = None) -> list[SubtitleCue]:
    """The cues of an SRT document, sorted by start time. A time line that cannot be read raises
    :class:`~spikelight.datamodules.base.DataError` naming ``source`` and the line number."""
    cues: list[SubtitleCue] = []
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if "-->" not in line:
            i += 1
            continue
        m = _ARROW.search(line)
        if m is None:
            raise DataError(source or "<srt>", f"line {i + 1}: cannot read the cue times {line!r}")
        start, end = _seconds(*m.groups()[:4]), _seconds(*m.groups()[4:])
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() and "-->" not in lines[i]:
            body.append(lines[i].strip())
            i += 1
        if body and i < len(lines) and "-->" in lines[i] and body[-1].isdigit():
            body.pop()  # the next cue's index line (no blank line between cues)
        words = " ".join(_TAGS.sub("", b) for b in body).split()
        if words:
            cues.append(SubtitleCue(start, max(start, end), " ".join(words)))
    cues.sort(key=lambda c: (c.start, c.end))
    return cues


def read_srt(path: str | Path) -> list[SubtitleCue]:
    """:func:`parse_srt` of a file (UTF-8, undecodable bytes replaced)."""
    p = Path(path)
    return parse_srt(p.read_bytes().decode("utf-8", errors="replace"), source=p)


def subtitles_in_range(cues: Sequence[SubtitleCue], start: float, end: float, *, max_lines: int | None = None) -> list[str]:
    """Texts of the cues shown at any time in ``[start, end]`` seconds, in order, consecutive duplicates
    removed; with ``max_lines``, that many spread uniformly over them."""
    out: list[str] = []
    for c in cues:
        if c.end >= start and c.start <= end and (not out or out[-1] != c.text):
            out.append(c.text)
    if max_lines is not None and len(out) > max_lines:
        step = len(out) / max_lines
        out = [out[int(i * step)] for i in range(max_lines)]
    return out


def find_subtitles(video: str | Path, subtitles_dir: str | Path | None = None) -> Path | None:
    """``<subtitles_dir>/<stem>.srt`` or, failing that, the ``.srt`` next to the video; ``None`` when absent."""
    video = Path(video)
    for cand in ([Path(subtitles_dir) / f"{video.stem}.srt"] if subtitles_dir else []) + [video.with_suffix(".srt")]:
        if cand.is_file():
            return cand
    return None
