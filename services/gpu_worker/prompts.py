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


def encode(tokenizer, encoder, text: str, chunk_count: int, hidden_layer: int | None = None):
    """`text` through one CLIP encoder, 75 tokens at a time, padded with empty chunks to `chunk_count`:
    ((1, 77·chunk_count, dim) weighted embeddings, the encoder's pooled output of the first chunk).
    `hidden_layer` picks a hidden state (-2: the penultimate layer); None: the last, normalised."""
    import torch

    parts = chunks(tokenizer, parse(text))
    parts += [([], [])] * (chunk_count - len(parts))
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    embeddings, pooled = [], None
    for ids, weights in parts:
        padded = [bos] + ids + [eos] + [pad] * (CHUNK - len(ids))
        w = torch.tensor([1.0] + weights + [1.0] * (CHUNK + 1 - len(weights)), device=encoder.device)
        out = encoder(torch.tensor([padded], device=encoder.device), output_hidden_states=hidden_layer is not None)
        hidden = out[0] if hidden_layer is None else out.hidden_states[hidden_layer]
        if pooled is None:  # A1111 takes the pooled output of the first chunk, unweighted
            pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
        mean = hidden.float().mean()
        hidden = hidden * w[None, :, None].to(hidden.dtype)
        hidden = hidden * (mean / hidden.float().mean()).to(hidden.dtype)
        embeddings.append(hidden)
    return torch.cat(embeddings, dim=1), pooled


def chunk_count(tokenizer, text: str) -> int:
    return len(chunks(tokenizer, parse(text)))


def needs_encoding(tokenizer, texts: list[str]) -> bool:
    """Whether any of `texts` uses A1111 syntax or is longer than one chunk (plain ones go to diffusers
    as text: the same embeddings)."""
    return any(needs_own_encoding(tokenizer, text) for text in texts)


def has_syntax(texts: list[str]) -> bool:
    """Whether any of `texts` has weights, brackets, escapes or a BREAK (what T5 would read literally)."""
    return any(parse(text) != [(text, 1.0)] for text in texts if text)


def t5_tokens(tokenizer, text: str, max_length: int) -> tuple[list[int], list[float]]:
    """T5 token ids and weights of `text` (A1111 weights; a BREAK is a space: T5 has no chunks), ended
    with </s> and padded to `max_length` as diffusers pads, the rest cut off."""
    ids: list[int] = []
    weights: list[float] = []
    for part, weight in parse(text):
        tokens = tokenizer(" " if weight is None else part, add_special_tokens=False).input_ids
        ids += tokens
        weights += [1.0 if weight is None else weight] * len(tokens)
    ids, weights = ids[: max_length - 1] + [tokenizer.eos_token_id], weights[: max_length - 1] + [1.0]
    padding = max_length - len(ids)
    return ids + [tokenizer.pad_token_id] * padding, weights + [1.0] * padding


def encode_t5(tokenizer, encoder, text: str, max_length: int):
    """`text` through a T5 encoder, each token's embedding scaled by its weight and the whole brought
    back to the unweighted mean, as A1111 does for CLIP: (1, max_length, dim). A text without weights
    gives what diffusers gives."""
    import torch

    ids, weights = t5_tokens(tokenizer, text, max_length)
    hidden = encoder(torch.tensor([ids], device=encoder.device))[0]
    if all(w == 1.0 for w in weights):
        return hidden
    w = torch.tensor(weights, device=hidden.device, dtype=hidden.dtype)
    mean = hidden.float().mean()
    hidden = hidden * w[None, :, None]
    return hidden * (mean / hidden.float().mean()).to(hidden.dtype)
