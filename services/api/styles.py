"""Prompt styles: a JSON list of {name, prompt, negative_prompt}, `{prompt}` marking where the request's
prompt goes (config `fooocus.styles_file`, default services/api/fooocus_styles.json). FooocusAPI's
style_selections and A1111's `styles` / `/sdapi/v1/prompt-styles` read the same list."""

import json
from functools import cache
from pathlib import Path

DEFAULT_FILE = Path(__file__).with_name("fooocus_styles.json")


@cache
def _load(path: str) -> dict[str, dict]:
    return {style["name"]: style for style in json.loads(Path(path).read_text())}


def load(config) -> dict[str, dict]:
    """name -> {name, prompt, negative_prompt}, in the file's order."""
    return _load(config.fooocus.styles_file or str(DEFAULT_FILE))


def unknown(names: list[str], config) -> list[str]:
    known = load(config)
    return [n for n in names if n not in known]


def merge(template: str, text: str) -> str:
    """A1111's rule (modules/styles.py): the text at `{prompt}`, else the template appended."""
    if not template:
        return text
    if "{prompt}" in template:
        return template.replace("{prompt}", text)
    return f"{text}, {template}" if text else template


def apply_a1111(prompt: str, negative: str, names: list[str], config) -> tuple[str, str]:
    """Each named style applied in turn to the prompt and the negative prompt, as A1111 does."""
    known = load(config)
    for name in names:
        prompt = merge(known[name].get("prompt", ""), prompt)
        negative = merge(known[name].get("negative_prompt", ""), negative)
    return prompt, negative
