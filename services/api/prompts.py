"""AUTOMATIC1111 prompt extras understood at the edge: `<lora:name:weight>` tags, taken out of the text
before it is encoded and turned into LoRA references checked against what the workers hold."""

import re

from schemas.jobs import LoraRef

from .errors import invalid
from .workers import WorkerDirectory

LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]+))?(?::[^>]*)?>")
OTHER_NETWORK_TAG = re.compile(r"<(?!lora:)(\w+):[^>]*>")  # <hypernet:…>, <lyco:…>: not served here
WEIGHT_RANGE = (-2.0, 2.0)


def split_loras(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """The prompt without its LoRA tags, and the (name, weight) pairs they named."""
    other = OTHER_NETWORK_TAG.search(prompt)
    if other:
        raise invalid(["prompt"], f"<{other.group(1)}:…> extra networks are not supported; only <lora:name:weight>")
    found = []
    for name, weight in LORA_TAG.findall(prompt):
        try:
            found.append((name.strip(), float(weight) if weight else 1.0))
        except ValueError:
            raise invalid(["prompt"], f"<lora:{name}:{weight}> has a weight that is not a number") from None
    cleaned = re.sub(r"\s{2,}", " ", LORA_TAG.sub("", prompt)).strip(" ,")
    return cleaned, found


class LoraCatalog:
    """The LoRA files live workers announce, per model they serve."""

    def __init__(self, workers: WorkerDirectory):
        self.workers = workers

    def available(self, model: str) -> dict[str, str]:
        files: dict[str, str] = {}
        for worker in self.workers.live():
            if model in worker.models_served:
                files.update(worker.loras)
        return files

    async def resolve(self, prompt: str, listed: list[tuple[str, float]], model: str,
                      field: str | list = "loras") -> tuple[str, list[LoraRef]]:
        loc = field if isinstance(field, list) else [field]
        prompt, tagged = split_loras(prompt)
        wanted = dict(tagged + listed)  # a name given twice: the later weight wins
        if not wanted:
            return prompt, []
        files = self.available(model)
        refs = []
        for name, weight in wanted.items():
            if not WEIGHT_RANGE[0] <= weight <= WEIGHT_RANGE[1]:
                raise invalid(loc, f"LoRA {name!r} weight {weight} is outside {WEIGHT_RANGE}")
            if name not in files:
                raise invalid(loc, f"unknown LoRA {name!r} for model {model!r}; known: {sorted(files)}")
            refs.append(LoraRef(name=name, weight=weight, sha256=files[name]))
        return prompt, refs
