"""Made-up prose and made-up data, for the simulated provider.

:func:`prose` strings sentences together from small phrase pools (Thai or
English), so a simulated chapter reads as varied text: it passes the QC code
checks (script share, repetition) the way a real model's chapter would.
:func:`instance` makes a value valid against a JSON Schema (the subset job
types use: objects, arrays with min/maxItems, enums and const, strings with
min/maxLength, integers and numbers with bounds, booleans, local ``$ref``,
``anyOf``/``oneOf``/``allOf``), deterministic for a given ``random.Random``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from .qccheck import grapheme_count

__all__ = ["instance", "prose", "words"]

_EN = (
    ("Mali", "The old ferryman", "Her brother", "The girl from the hills", "A tired soldier", "The lantern keeper",
     "Nobody in the village", "The stranger", "Grandmother Ploy", "The boy with the kite", "The widow", "Ton"),
    ("watched", "followed", "remembered", "carried", "feared", "questioned", "mended", "hid", "found", "lost",
     "burned", "counted", "painted", "buried"),
    ("the river at dusk", "a letter never sent", "the broken bell", "the smell of rain", "a map of the old road",
     "the last lantern", "the empty market", "a promise made in winter", "the silver key", "the fishing nets",
     "a song from the temple", "the mango orchard", "the narrow bridge", "the sleeping dog"),
    ("before the moon rose.", "while the others slept.", "as if it were the first time.", "without a word.",
     "and the night grew colder.", "until her hands shook.", "because someone had to.", "for the third time.",
     "and wondered why.", "under the banyan tree.", "as the storm came in.", "long after midnight."),
)
_TH = (
    ("มะลิ", "คนแจวเรือชรา", "พี่ชายของเธอ", "เด็กสาวจากเนินเขา", "ทหารผู้เหนื่อยล้า", "ผู้ดูแลโคมไฟ",
     "ไม่มีใครในหมู่บ้าน", "คนแปลกหน้า", "ยายพลอย", "เด็กชายกับว่าว", "หญิงม่าย", "ต้น"),
    ("เฝ้ามอง", "เดินตาม", "นึกถึง", "แบกไว้", "หวาดกลัว", "ตั้งคำถามกับ", "ซ่อมแซม", "ซ่อน", "พบ", "ทำหาย",
     "เผา", "นับ", "วาดภาพ", "ฝัง"),
    ("แม่น้ำยามพลบค่ำ", "จดหมายที่ไม่เคยส่ง", "ระฆังที่แตกร้าว", "กลิ่นของฝน", "แผนที่ถนนสายเก่า",
     "โคมไฟดวงสุดท้าย", "ตลาดที่ว่างเปล่า", "คำสัญญาในฤดูหนาว", "กุญแจเงิน", "แหจับปลา",
     "บทเพลงจากวัด", "สวนมะม่วง", "สะพานแคบ", "สุนัขที่หลับอยู่"),
    ("ก่อนที่พระจันทร์จะขึ้น", "ขณะที่คนอื่นหลับใหล", "ราวกับเป็นครั้งแรก", "โดยไม่พูดสักคำ",
     "และคืนนั้นก็หนาวขึ้น", "จนมือสั่น", "เพราะต้องมีใครสักคนทำ", "เป็นครั้งที่สาม", "และสงสัยว่าทำไม",
     "ใต้ต้นไทร", "ขณะที่พายุโหมเข้ามา", "จนดึกดื่น"),
)


#: Openers and manners, each sometimes left out: more ways for sentences to differ.
_EN_OPEN = ("Then", "Later", "That evening", "At first light", "In the end", "Once again", "Quietly", "Meanwhile")
_EN_HOW = ("slowly", "almost gently", "at last", "with care", "in secret", "once more", "half asleep", "still")
_TH_OPEN = ("แล้ว", "ต่อมา", "เย็นวันนั้น", "ครั้นรุ่งสาง", "ในที่สุด", "อีกครั้งหนึ่ง", "อย่างเงียบ ๆ", "ขณะเดียวกัน")
_TH_HOW = ("อย่างช้า ๆ", "อย่างแผ่วเบา", "ในที่สุด", "อย่างระมัดระวัง", "อย่างลับ ๆ", "อีกครั้ง", "อย่างงัวเงีย", "ยังคง")


def _sentence(rng: random.Random, thai: bool) -> str:
    pools = _TH if thai else _EN
    parts = [rng.choice(pool) for pool in pools]
    how = rng.choice(_TH_HOW if thai else _EN_HOW)
    if thai:
        parts[1:1] = [how] if rng.random() < 0.5 else []
        parts[:0] = [rng.choice(_TH_OPEN)] if rng.random() < 0.4 else []
    else:
        parts.insert(2, how) if rng.random() < 0.5 else None
        if rng.random() < 0.4:
            parts[0] = parts[0] if parts[0][0].isupper() and parts[0].split()[0] in ("Mali", "Ton") else (
                parts[0][0].lower() + parts[0][1:])
            parts[:0] = [rng.choice(_EN_OPEN) + ","]
    # Thai runs its words together and ends a sentence with a space; English spaces words.
    return "".join(parts) if thai else " ".join(parts)


def prose(rng: random.Random, language: str | None, length: int) -> str:
    """About ``length`` words (grapheme clusters for Thai) of varied prose, in
    paragraphs of a few sentences; Thai for ``th``, English otherwise."""
    thai = (language or "").lower().split("-")[0] == "th"
    sentences: list[str] = []
    size = 0
    while size < max(1, length):
        sentence = _sentence(rng, thai)
        sentences.append(sentence)
        size += grapheme_count(sentence) + 1 if thai else len(sentence.split())  # Thai: as QC measures it
    paragraphs = [sentences[i:i + 4] for i in range(0, len(sentences), 4)]
    return "\n\n".join(" ".join(p) for p in paragraphs)


def words(rng: random.Random, language: str | None, n: int = 3) -> str:
    """A short phrase (a name, a title): ``n`` pool entries, one per slot."""
    thai = (language or "").lower().split("-")[0] == "th"
    pools = _TH if thai else _EN
    return ("" if thai else " ").join(rng.choice(pools[i % 3]) for i in range(max(1, n)))


#: Property names whose strings are long prose rather than a phrase.
LONG_TEXT = frozenset({"text", "content", "chapter", "body", "prose", "summary", "events", "premise", "arc",
                       "description", "notes", "feedback", "state"})


def instance(schema: Mapping[str, Any], rng: random.Random, language: str | None, *,
             root: Mapping[str, Any] | None = None, name: str = "", low: bool = False,
             text_length: int = 60) -> Any:
    """A value valid against ``schema`` (see the module docstring).

    ``low``: integers and numbers at their minimum and booleans false (a
    simulated failing QC report); otherwise integers land in the upper part of
    their range and booleans are true. Strings are prose in ``language``:
    long (``text_length``) for property names in :data:`LONG_TEXT`.
    """
    root = schema if root is None else root
    again = lambda sub, key=name: instance(sub, rng, language, root=root, name=key, low=low,  # noqa: E731
                                           text_length=text_length)
    if not isinstance(schema, Mapping):
        return None  # `true` / `{}`: anything goes
    if "$ref" in schema:
        return again(_resolve(root, schema["$ref"]))
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        choices = list(schema["enum"])
        return choices[0] if low else rng.choice(choices)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if not (isinstance(s, Mapping) and s.get("type") == "null")]
            return again((options or schema[key])[0])
    if "allOf" in schema:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = _resolve(root, part["$ref"]) if isinstance(part, Mapping) and "$ref" in part else part
            if isinstance(part, Mapping):
                merged["properties"] = {**merged.get("properties", {}), **part.get("properties", {})}
                merged["required"] = [*merged.get("required", []), *part.get("required", [])]
                merged.update({k: v for k, v in part.items() if k not in ("properties", "required")})
        return again(merged)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        props = schema.get("properties", {})
        return {key: again(sub, key) for key, sub in props.items()}
    if kind == "array":
        low_n = int(schema.get("minItems", 1))
        high_n = int(schema.get("maxItems", max(low_n, 3)))
        count = max(low_n, min(high_n, low_n + rng.randint(0, 2)))
        items = schema.get("items", {})
        return [again(items, name) for _ in range(count)]
    if kind in ("integer", "number"):
        return _number(schema, rng, low, kind == "integer")
    if kind == "boolean":
        return not low
    if kind == "null":
        return None
    return _string(schema, rng, language, name, text_length)


def _resolve(root: Mapping[str, Any], ref: str) -> Mapping[str, Any]:
    if not ref.startswith("#"):
        return {}  # only local references; anything else is left open
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/") if ref != "#" else ():
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _number(schema: Mapping[str, Any], rng: random.Random, low: bool, integer: bool) -> int | float:
    lo = schema.get("minimum", schema.get("exclusiveMinimum", 0))
    hi = schema.get("maximum", schema.get("exclusiveMaximum", max(lo, 0) + 10))
    if "exclusiveMinimum" in schema:
        lo = lo + (1 if integer else 1e-6)
    if "exclusiveMaximum" in schema:
        hi = hi - (1 if integer else 1e-6)
    if integer:
        lo, hi = int(-(-lo // 1)), int(hi // 1)  # ceil, floor
        if low:
            return lo
        return rng.randint(max(lo, lo + (hi - lo) * 7 // 10), hi) if hi >= lo else lo
    if low:
        return float(lo)
    return round(rng.uniform(lo + (hi - lo) * 0.7, hi), 3) if hi >= lo else float(lo)


def _string(schema: Mapping[str, Any], rng: random.Random, language: str | None, name: str,
            text_length: int) -> str:
    lo = int(schema.get("minLength", 1))
    hi = int(schema.get("maxLength", 10_000_000))
    if schema.get("format") == "date":
        return "2025-01-15"
    if schema.get("format") == "date-time":
        return "2025-01-15T09:00:00Z"
    text = prose(rng, language, text_length) if name in LONG_TEXT else words(rng, language, 2)
    while len(text) < lo:
        text += " " + words(rng, language, 2)
    return text[:hi]
