"""AUTOMATIC1111 prompt syntax for CLIP text encoders: `(word)` ×1.1, `((word))` ×1.21, `[word]` ÷1.1,
`(word:1.3)`, escaped `\\(` `\\)` `\\[` `\\]`, `BREAK` (starts a new 75-token chunk), and prompts of any
length, encoded 75 tokens at a time and concatenated. Weights scale the token embeddings, then the
chunk's mean is restored, as A1111 does."""

import re

ROUND, SQUARE = 1.1, 1 / 1.1
CHUNK = 75  # tokens per chunk, between the start and end tokens

_TOKENS = re.compile(r"""
    \\[\\()\[\]] |          # an escaped bracket or backslash
    \( | \[ |               # an opening bracket
    :\s*([+-]?[.\d]+)\s*\) |  # a weight closing a round bracket
    \) | \] |               # a closing bracket
    [^\\()\[\]:]+ |         # text
    :                       # a colon that is only text
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")

Fragments = list[tuple[str, float | None]]  # text, weight; a weight of None marks a BREAK


def parse(text: str) -> Fragments:
    """The prompt as (text, weight) fragments."""
    out: Fragments = []
    open_round: list[int] = []
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for i in range(start, len(out)):
            if out[i][1] is not None:
                out[i] = (out[i][0], out[i][1] * factor)

    for match in _TOKENS.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            out.append((token[1:], 1.0))
        elif token == "(":
            open_round.append(len(out))
        elif token == "[":
            open_square.append(len(out))
        elif weight is not None and open_round:
            scale(open_round.pop(), float(weight))
        elif token == ")" and open_round:
            scale(open_round.pop(), ROUND)
        elif token == "]" and open_square:
            scale(open_square.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i:
                    out.append(("BREAK", None))
                if part:
                    out.append((part, 1.0))
    for start in open_round:  # unclosed brackets still weigh, as in A1111
        scale(start, ROUND)
    for start in open_square:
        scale(start, SQUARE)
    merged: Fragments = []
    for text_part, weight in out:
        if merged and weight is not None and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text_part, weight)
        else:
            merged.append((text_part, weight))
    return merged or [("", 1.0)]


def needs_own_encoding(tokenizer, text: str) -> bool:
    """Plain prompts that fit one chunk go to diffusers as they are (the same embeddings)."""
    fragments = parse(text)
    if any(weight != 1.0 for _, weight in fragments) or "".join(t for t, _ in fragments) != text:
        return True  # weights, a BREAK, or brackets and escapes to take out
    return len(tokenizer(text, add_special_tokens=False).input_ids) > CHUNK


def chunks(tokenizer, fragments: Fragments) -> list[tuple[list[int], list[float]]]:
    """Token ids and weights in chunks of at most CHUNK tokens (a BREAK closes the current chunk)."""
    result: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    for text, weight in fragments:
        if weight is None:
            result.append((ids, weights))
            ids, weights = [], []
            continue
        for token in tokenizer(text, add_special_tokens=False).input_ids:
            if len(ids) == CHUNK:
                result.append((ids, weights))
                ids, weights = [], []
            ids.append(token)
            weights.append(weight)
    if ids or not result:
        result.append((ids, weights))
    return result


def encode(pipe, text: str, chunk_count: int):
    """(1, 77·chunk_count, dim) embeddings of `text`, padded with empty chunks to `chunk_count`."""
    import torch

    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    parts = chunks(tokenizer, parse(text))
    parts += [([], [])] * (chunk_count - len(parts))
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    embeddings = []
    for ids, weights in parts:
        padded = [bos] + ids + [eos] + [pad] * (CHUNK - len(ids))
        w = torch.tensor([1.0] + weights + [1.0] * (CHUNK + 1 - len(weights)), device=encoder.device)
        hidden = encoder(torch.tensor([padded], device=encoder.device))[0]
        mean = hidden.float().mean()
        hidden = hidden * w[None, :, None].to(hidden.dtype)
        hidden = hidden * (mean / hidden.float().mean()).to(hidden.dtype)
        embeddings.append(hidden)
    return torch.cat(embeddings, dim=1)


def chunk_count(tokenizer, text: str) -> int:
    return len(chunks(tokenizer, parse(text)))


def embeddings(pipe, prompts: list[str], negatives: list[str]):
    """Prompt and negative embeddings for a batch, every one the same length; None when diffusers'
    own encoding gives the same result (plain prompts of one chunk) or the model is not CLIP-only."""
    if getattr(pipe, "text_encoder_2", None) is not None or getattr(pipe, "text_encoder", None) is None:
        return None
    tokenizer = pipe.tokenizer
    if not any(needs_own_encoding(tokenizer, text) for text in prompts + negatives):
        return None
    import torch

    count = max(chunk_count(tokenizer, text) for text in prompts + negatives)
    with torch.no_grad():
        positive = torch.cat([encode(pipe, text, count) for text in prompts])
        negative = torch.cat([encode(pipe, text, count) for text in negatives])
    return positive, negative
