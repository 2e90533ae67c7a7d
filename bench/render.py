"""Text lines and pages drawn with Pillow from known strings (the OCR models' ground truth).

Everything is drawn from a seeded ``numpy.random.Generator`` passed in, with fonts and words
read in sorted order, so the same seed gives the same images on any machine with the same
Debian font packages (fonts-dejavu-core, fonts-liberation, fonts-freefont-ttf, fonts-wqy-microhei).
"""

from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

LATIN_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSerif.ttf",
)
CJK_FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"
FONT_PACKAGES = "fonts-dejavu-core fonts-liberation fonts-freefont-ttf fonts-wqy-microhei"

# Frequent Chinese characters (all in the PP-OCR dictionary), for the lines set in the CJK font.
CJK_CHARS = ("的一是不了人我在有他这中大来上们为和国地到以说时要就出也得里后自会家可下而过天去能对小多然于心学"
             "么之都好看起发当没成只如事把还用第样道想作种开美总从无情己面最女但现前些所同日手又行意动方期它头经"
             "长儿回位分爱老因很给名法间知世什两次使身者被高已亲其进此话常与活正感")
WORD_SOURCE = pathlib.Path("/usr/share/common-licenses")
FALLBACK_WORDS = ("license software program copy source code free work terms version public general "
                  "distribute modify notice warranty patent rights object form file system data").split()


@dataclass(frozen=True)
class Line:
    """A rendered text line: RGB pixels (H, W, 3) uint8 and the string drawn."""

    pixels: np.ndarray
    text: str


@dataclass(frozen=True)
class Page:
    """A rendered page: RGB pixels (H, W, 3) uint8, the strings and their line boxes (x0, y0, x1, y1)."""

    pixels: np.ndarray
    texts: tuple[str, ...]
    boxes: tuple[tuple[int, int, int, int], ...]


def missing_fonts() -> list[str]:
    """The font files this module draws with that are not installed."""
    return [f for f in (*LATIN_FONTS, CJK_FONT) if not pathlib.Path(f).is_file()]


def vocabulary() -> list[str]:
    """Sorted distinct words (2-12 letters) of the Debian license texts, or a small fallback list."""
    words: set[str] = set()
    if WORD_SOURCE.is_dir():
        for path in sorted(WORD_SOURCE.iterdir()):
            if path.is_file():
                words.update(re.findall(r"\b[A-Za-z]{2,12}\b", path.read_text(errors="ignore")))
    return sorted(words) or sorted(FALLBACK_WORDS)


def random_text(rng: np.random.Generator, words: list[str], *, max_chars: int) -> tuple[str, bool]:
    """A string of at most ``max_chars`` characters, and whether it needs the CJK font.

    A mix of kinds: English words, numbers and dates, codes, and (one line in five) Chinese."""
    kind = rng.choice(["words", "words", "numbers", "code", "cjk"])
    if kind == "cjk":
        n = int(rng.integers(2, max(3, max_chars // 2)))
        text = "".join(rng.choice(list(CJK_CHARS), size=n))
        if rng.random() < 0.3:
            text += str(int(rng.integers(1, 2030)))
        return text[:max_chars], True
    if kind == "numbers":
        parts = [f"{int(rng.integers(1990, 2030))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}",
                 f"${rng.integers(1, 10000)}.{int(rng.integers(0, 100)):02d}",
                 f"No.{int(rng.integers(1, 99999))}", f"{int(rng.integers(0, 100))}%",
                 f"Tel {int(rng.integers(100, 999))}-{int(rng.integers(1000, 9999))}"]
        text = " ".join(str(p) for p in rng.permutation(parts)[: int(rng.integers(1, 4))])
    elif kind == "code":
        text = "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"), size=int(rng.integers(4, 10))))
        text += f"-{words[int(rng.integers(len(words)))]}"
    else:
        chosen = [words[int(i)] for i in rng.integers(0, len(words), size=int(rng.integers(1, 7)))]
        if rng.random() < 0.5:
            chosen[0] = chosen[0].capitalize()
        text = " ".join(chosen) + ("." if rng.random() < 0.3 else "")
    text = text[:max_chars].strip()
    return text or "text", False


def _font(rng: np.random.Generator, cjk: bool, size: int) -> ImageFont.FreeTypeFont:
    path = CJK_FONT if cjk else LATIN_FONTS[int(rng.integers(len(LATIN_FONTS)))]
    return ImageFont.truetype(path, size)


def _degrade(img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """Light blur and Gaussian pixel noise, as a scanner or camera adds."""
    radius = float(rng.uniform(0.0, 1.0))
    if radius > 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    pixels = np.asarray(img, dtype=np.float32)
    pixels = pixels + rng.normal(0.0, float(rng.uniform(2.0, 8.0)), size=pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _colors(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    bg = tuple(int(v) for v in rng.integers(190, 256, size=3))
    fg = tuple(int(v) for v in rng.integers(0, 70, size=3))
    return bg, fg


def render_line(rng: np.random.Generator, words: list[str], *, max_chars: int = 40) -> Line:
    """One text line, cropped around the ink with a margin of a few pixels."""
    text, cjk = random_text(rng, words, max_chars=max_chars)
    font = _font(rng, cjk, int(rng.integers(26, 42)))
    x0, y0, x1, y1 = font.getbbox(text)
    margin_x, margin_y = int(rng.integers(3, 12)), int(rng.integers(3, 10))
    bg, fg = _colors(rng)
    img = Image.new("RGB", (x1 - x0 + 2 * margin_x, y1 - y0 + 2 * margin_y), bg)
    ImageDraw.Draw(img).text((margin_x - x0, margin_y - y0), text, font=font, fill=fg)
    return Line(_degrade(img, rng), text)


def render_page(rng: np.random.Generator, words: list[str], *, size: tuple[int, int] = (480, 640)) -> Page:
    """A page of ``size`` (height, width) with 3-8 lines at known, non-overlapping boxes.

    A line's box spans its ink horizontally and the font's ascent to descent vertically, as a
    text-line label does; tight ink boxes of lines without ascenders or descenders are so much
    lower than DB's unclipped boxes that IoU 0.5 would judge the labels, not the model."""
    height, width = size
    bg, fg = _colors(rng)
    img = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(img)
    wanted = int(rng.integers(3, 9))
    texts, boxes = [], []
    y = int(rng.integers(8, 30))
    while len(texts) < wanted:
        text, cjk = random_text(rng, words, max_chars=int(rng.integers(6, 30)))
        font = _font(rng, cjk, int(rng.integers(18, 38)))
        x0, y0, x1, y1 = font.getbbox(text)
        if x1 - x0 > width - 20:
            continue
        if y + (y1 - y0) > height - 8:
            break
        x = int(rng.integers(8, width - (x1 - x0) - 8))
        draw.text((x - x0, y - y0), text, font=font, fill=fg)
        ink = draw.textbbox((x - x0, y - y0), text, font=font)
        ascent, descent = font.getmetrics()
        box = (ink[0], y - y0, ink[2], y - y0 + ascent + descent)
        texts.append(text)
        boxes.append(tuple(int(v) for v in box))
        y = max(box[3], ink[3]) + int(rng.integers(12, 40))
    return Page(_degrade(img, rng), tuple(texts), tuple(boxes))
