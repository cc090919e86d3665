"""CaseOps: a lossless case transform, and the byte counts that score CaseOps tokens on the original text.

`transform` rewrites capitals as lowercase letters plus operator code points from the Private Use
Area, so a tokenizer spends no pieces on case variants of a word; `inverse(transform(s)) == s` for
every string. Only ASCII letters are case-transformed (their lower and upper forms have the same
UTF-8 length, so case never changes a byte count); every other character is kept as it is.

Operators, each one code point, placed right before the letter they act on, except that TITLE and
ALLCAPS go before the single space that precedes their word ("a \ue001b" would cost a lone "▁" piece;
"a\ue001 b" keeps the "▁b" piece of the lowercase word):

- `TITLE`: the next letter is uppercase (TitleCase words, and the capital that starts a mixed word);
- `ALLCAPS`: the whole following word is uppercase (words of 2 or more capitals);
- `UPPER`: the next letter is uppercase (the inner capitals of mixed words such as "McDonald");
- `ESC`: the next character is literal (how operator characters in the input are kept).

A word is a maximal run of ASCII letters, except that a letter followed by a combining mark
(category M*) is left untouched: "w" + U+030A composes under NFKC while "W" + U+030A does not, so
lowering it would change the text the tokenizer's normalizer produces.

Bits per byte: the bytes scored are those of `normalized_text(sp, text)`, the text the plain path
scores (what `sp.decode(sp.encode(text))` returns; `tokenizer.target_bytes` sums to its UTF-8
length). `encode_document` transforms that normalized text, and `original_bytes` counts per token the
normalized-text bytes it stands for: what the plain byte tables count for its piece, minus 3 bytes
for each operator that acts (a literal, escaped operator counts its 3 bytes; BOS counts 0).
"""

from __future__ import annotations

import re
import sys
import unicodedata

import numpy as np

TITLE = "\ue001"
ALLCAPS = "\ue002"
UPPER = "\ue003"
ESC = "\ue004"
OPERATORS = (TITLE, ALLCAPS, UPPER, ESC)
SPACE_MARK = "\u2581"  # tokenizer.SPACE_MARK; that module imports torch, which tokenizing workers do without


class CaseOpsError(ValueError):
    """A string is not a CaseOps transform (dangling operator), or a tokenizer lacks the operator pieces."""


def _mark_class() -> str:
    """A regex character class of every combining mark (Unicode category M*) of this Python's database."""
    ranges: list[list[int]] = []
    for code in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code))[0] == "M":
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return "[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges) + "]"


_MARK = re.compile(_mark_class())
# Literal operators, and words holding a capital with the single space before them.
_FORWARD = re.compile(f"[{TITLE}-{ESC}]|( ?)(?<![A-Za-z])([A-Za-z]*[A-Z][A-Za-z]*)")
_INVERSE = re.compile(
    f"{ESC}([\\s\\S])|{ALLCAPS}( ?)([a-z]+)|{TITLE}( ?)([a-z])|{UPPER}([a-z])|[{TITLE}-{ESC}]"
)


def _before_mark(match: re.Match) -> bool:
    """Whether the character right after the match is a combining mark (its last letter then stays as it is)."""
    return _MARK.match(match.string, match.end()) is not None


def _encode_word(word: str) -> str:
    if not word:
        return word
    if word.isupper() and len(word) >= 2:
        return ALLCAPS + word.lower()
    head = TITLE + word[0].lower() if word[0].isupper() else word[0]
    return head + "".join(UPPER + c.lower() if c.isupper() else c for c in word[1:])


def _forward(match: re.Match) -> str:
    if match.group(2) is None:
        return ESC + match.group(0)
    space, word = match.groups()
    tail = ""
    if _before_mark(match):
        word, tail = word[:-1], word[-1]
    encoded = _encode_word(word)
    if space and encoded[:1] in (TITLE, ALLCAPS):  # "a \ue001b" would tokenize as "▁", op, "b"
        return encoded[0] + space + encoded[1:] + tail
    return space + encoded + tail


def transform(text: str) -> str:
    """Lowercase text with case operators; literal operator characters are escaped."""
    return _FORWARD.sub(_forward, text)


def _inverse(match: re.Match) -> str:
    literal, caps_space, caps, title_space, title, upper = match.groups()
    if literal is not None:
        return literal
    if caps is not None:
        return caps_space + (caps[:-1].upper() + caps[-1] if _before_mark(match) else caps.upper())
    if title is not None:
        return title_space + title.upper()
    if upper is not None:
        return upper.upper()
    where = match.string[max(0, match.start() - 20) : match.end() + 20]
    raise CaseOpsError(
        f"operator U+{ord(match.group(0)):04X} has nothing to act on (a lowercase letter; any character after ESC) "
        f"in {where!r}: the text is not a CaseOps transform"
    )


def inverse(text: str) -> str:
    """The original text of `transform(...)` output; a dangling operator raises `CaseOpsError`."""
    return _INVERSE.sub(_inverse, text)


# ---------------------------------------------------------------------------------------------
# Tokenizer side


def normalized_text(sp, text: str) -> str:
    """The text the tokenizer scores for `text`: its normalizer's output (NFKC, whitespace rules) with the
    space mark read back as a space, equal to `sp.decode(sp.encode(text))`."""
    return sp.normalize(text).replace(SPACE_MARK, " ")


def operator_ids(sp) -> np.ndarray:
    """Ids of TITLE, ALLCAPS, UPPER, ESC in `sp`; each must be a user-defined (never split) piece."""
    ids = [sp.piece_to_id(op) for op in OPERATORS]
    missing = [f"U+{ord(op):04X}" for op, i in zip(OPERATORS, ids, strict=True) if i == sp.unk_id() or sp.id_to_piece(i) != op]
    if missing:
        raise CaseOpsError(
            f"the tokenizer has no piece for the CaseOps operator(s) {', '.join(missing)}: use a tokenizer trained "
            "by `lit-golf prepare-data --caseops --train-tokenizer` (operators as user-defined symbols)"
        )
    return np.asarray(ids, dtype=np.int64)


def encode_document(sp, text: str) -> tuple[list[int], str]:
    """Token ids of the CaseOps form of `text`, and the normalized text they stand for."""
    normalized = normalized_text(sp, text)
    return sp.encode(transform(normalized)), normalized


def original_bytes(tokens: np.ndarray, piece_bytes: np.ndarray, esc_id: int, operator_mask: np.ndarray) -> np.ndarray:
    """Per token of a CaseOps stream, the UTF-8 bytes of normalized original text it stands for.

    `piece_bytes[i]` is what the plain byte tables count for token i at its place (`target_bytes`, 0 for
    BOS). An operator token counts 0, unless an acting ESC precedes it (then it is a literal character and
    keeps its bytes); an ESC is acting unless it is itself escaped.
    """
    counts = np.asarray(piece_bytes, dtype=np.int64).copy()
    is_operator = operator_mask[tokens]
    escaped = np.zeros(tokens.size, dtype=bool)
    for i in np.flatnonzero(tokens == esc_id):  # ESC runs are rare; resolve them left to right
        if not escaped[i] and i + 1 < tokens.size:
            escaped[i + 1] = True
    counts[is_operator & ~escaped] = 0
    return counts


class SidecarCounter:
    """Per-token original byte counts of CaseOps token streams made with tokenizer `sp` (the sidecar's content)."""

    def __init__(self, sp):
        from lit_golf.data.tokenizer import build_byte_luts  # torch: only where sidecars are made

        vocab = int(sp.vocab_size())
        ids = operator_ids(sp)
        self.luts = build_byte_luts(sp, vocab)
        self.esc_id = int(ids[OPERATORS.index(ESC)])
        self.operator_mask = np.zeros(vocab, dtype=bool)
        self.operator_mask[ids] = True

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        """Counts for `tokens`, a stream of whole documents (it starts with BOS, which counts 0)."""
        import torch

        from lit_golf.data.tokenizer import target_bytes

        stream = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
        piece_bytes = np.zeros(stream.numel(), dtype=np.int64)
        piece_bytes[1:] = target_bytes(stream[:-1], stream[1:], self.luts).numpy()
        return original_bytes(stream.numpy(), piece_bytes, self.esc_id, self.operator_mask)


def manifest_entry(sidecar_shards: int, scored_bytes: int) -> dict:
    """What a CaseOps dataset's manifest records under "caseops" (readers check the key's presence)."""
    return {
        "transform": "lit_golf.data.caseops v1 (ASCII letters)",
        "operators": {name: f"U+{ord(op):04X}" for name, op in zip(("title", "allcaps", "upper", "esc"), OPERATORS, strict=True)},
        "byte_sidecar": "fineweb_val_bytes_NNNNNN.bin, one uint16 count per token of fineweb_val_NNNNNN.bin",
        "bytes_counted": "UTF-8 bytes of the tokenizer-normalized original text (sp.decode(sp.encode(text)))",
        "sidecar_shards": sidecar_shards,
        "val_scored_bytes": scored_bytes,
    }
