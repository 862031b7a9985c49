"""Contact sheets: a grid of image thumbnails with a caption each (Pillow only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from neuroenc.core.cache import atomic_path

__all__ = ["contact_sheet"]


def contact_sheet(rows: Sequence[tuple[str, Sequence, Sequence[str]]], out: str | Path, *,
                  thumb: int = 112, columns: int = 10, title: str = "") -> Path:
    """Write a PNG of labelled thumbnail rows; return its path.

    Parameters
    ----------
    rows : sequence of ``(heading, images, captions)``
        Each section starts a new line under its heading; ``images`` are paths or PIL
        images, one caption (e.g. the predicted ROI response) under each.
    out : path of the PNG
    thumb : thumbnail edge in pixels
    columns : thumbnails per line
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    columns = max(1, min(columns, max((len(images) for _, images, _ in rows), default=1)))
    pad, text_h, head_h = 6, 14, 20
    lines = []  # (heading or None, [(image, caption)])
    for heading, images, captions in rows:
        items = list(zip(images, captions))
        chunks = [items[i:i + columns] for i in range(0, len(items), columns)] or [[]]
        for j, chunk in enumerate(chunks):
            lines.append((heading if j == 0 else None, chunk))
    width = pad + columns * (thumb + pad)
    height = (head_h if title else 0) + sum((head_h if h else 0) + thumb + text_h + pad
                                            for h, _ in lines) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    y = pad
    if title:
        draw.text((pad, y), title, fill="black", font=font)
        y += head_h
    for heading, chunk in lines:
        if heading:
            draw.text((pad, y + 4), heading, fill="black", font=font)
            y += head_h
        for i, (image, caption) in enumerate(chunk):
            img = image if isinstance(image, Image.Image) else Image.open(image)
            img = img.convert("RGB")
            img.thumbnail((thumb, thumb))
            x = pad + i * (thumb + pad)
            sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
            draw.text((x, y + thumb + 1), str(caption)[:24], fill="black", font=font)
        y += thumb + text_h + pad
    out = Path(out)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out
