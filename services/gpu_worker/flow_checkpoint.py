"""Writing a diffusers SD3 or Flux transformer as the single file people download: the original
(Stability's MMDiT, Black Forest Labs' Flux) key layout, q/k/v joined, under `model.diffusion_model.`
as ComfyUI and CivitAI ship them. The transformer only: such files are loaded with their text
encoders and VAE from the `config:` folder. How the single-file path is exercised offline."""

from pathlib import Path

# (original name, diffusers names): several diffusers tensors joined on dim 0; "swap:" marks the
# final AdaLN whose shift and scale halves are stored the other way round
SD3_TOP = [("x_embedder.proj", ["pos_embed.proj"]),
           ("t_embedder.mlp.0", ["time_text_embed.timestep_embedder.linear_1"]),
           ("t_embedder.mlp.2", ["time_text_embed.timestep_embedder.linear_2"]),
           ("y_embedder.mlp.0", ["time_text_embed.text_embedder.linear_1"]),
           ("y_embedder.mlp.2", ["time_text_embed.text_embedder.linear_2"]),
           ("context_embedder", ["context_embedder"]), ("final_layer.linear", ["proj_out"]),
           ("final_layer.adaLN_modulation.1", ["swap:norm_out.linear"])]
SD3_BLOCK = [("x_block.attn.qkv", ["attn.to_q", "attn.to_k", "attn.to_v"]),
             ("context_block.attn.qkv", ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"]),
             ("x_block.attn.ln_q", ["attn.norm_q"]), ("x_block.attn.ln_k", ["attn.norm_k"]),
             ("context_block.attn.ln_q", ["attn.norm_added_q"]), ("context_block.attn.ln_k", ["attn.norm_added_k"]),
             ("x_block.attn.proj", ["attn.to_out.0"]), ("context_block.attn.proj", ["attn.to_add_out"]),
             ("x_block.attn2.qkv", ["attn2.to_q", "attn2.to_k", "attn2.to_v"]),
             ("x_block.attn2.ln_q", ["attn2.norm_q"]), ("x_block.attn2.ln_k", ["attn2.norm_k"]),
             ("x_block.attn2.proj", ["attn2.to_out.0"]),
             ("x_block.adaLN_modulation.1", ["norm1.linear"]),
             ("x_block.mlp.fc1", ["ff.net.0.proj"]), ("x_block.mlp.fc2", ["ff.net.2"]),
             ("context_block.mlp.fc1", ["ff_context.net.0.proj"]), ("context_block.mlp.fc2", ["ff_context.net.2"])]
FLUX_TOP = [("img_in", ["x_embedder"]), ("txt_in", ["context_embedder"]),
            ("time_in.in_layer", ["time_text_embed.timestep_embedder.linear_1"]),
            ("time_in.out_layer", ["time_text_embed.timestep_embedder.linear_2"]),
            ("vector_in.in_layer", ["time_text_embed.text_embedder.linear_1"]),
            ("vector_in.out_layer", ["time_text_embed.text_embedder.linear_2"]),
            ("guidance_in.in_layer", ["time_text_embed.guidance_embedder.linear_1"]),
            ("guidance_in.out_layer", ["time_text_embed.guidance_embedder.linear_2"]),
            ("final_layer.linear", ["proj_out"]), ("final_layer.adaLN_modulation.1", ["swap:norm_out.linear"])]
FLUX_DOUBLE = [("img_mod.lin", ["norm1.linear"]), ("txt_mod.lin", ["norm1_context.linear"]),
               ("img_attn.qkv", ["attn.to_q", "attn.to_k", "attn.to_v"]),
               ("txt_attn.qkv", ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"]),
               ("img_attn.norm.query_norm", ["attn.norm_q"]), ("img_attn.norm.key_norm", ["attn.norm_k"]),
               ("txt_attn.norm.query_norm", ["attn.norm_added_q"]), ("txt_attn.norm.key_norm", ["attn.norm_added_k"]),
               ("img_attn.proj", ["attn.to_out.0"]), ("txt_attn.proj", ["attn.to_add_out"]),
               ("img_mlp.0", ["ff.net.0.proj"]), ("img_mlp.2", ["ff.net.2"]),
               ("txt_mlp.0", ["ff_context.net.0.proj"]), ("txt_mlp.2", ["ff_context.net.2"])]
FLUX_SINGLE = [("linear1", ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]), ("linear2", ["proj_out"]),
               ("norm.query_norm", ["attn.norm_q"]), ("norm.key_norm", ["attn.norm_k"]),
               ("modulation.lin", ["norm.linear"])]


PREFIX = "model.diffusion_model."


def _swap(tensor):
    import torch

    shift, scale = tensor.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def _rules(rules: list, original_prefix: str, diffusers_prefix: str):
    """(original key, diffusers keys joined in it, halves swapped) for weights and biases."""
    for original, names in rules:
        for kind in ("weight", "bias"):
            original_kind = "scale" if original.endswith("_norm") else kind  # BFL calls RMSNorm weights `scale`
            yield (f"{original_prefix}{original}.{original_kind}",
                   [f"{diffusers_prefix}{n.removeprefix('swap:')}.{kind}" for n in names], names[0].startswith("swap:"))


def plan(config) -> list[tuple[str, list[str], bool]]:
    """Every original tensor of an SD3 or Flux transformer with this config and the diffusers tensors
    it holds (those a model lacks, such as qk norms or a guidance embedder, are skipped by the caller)."""
    if "num_single_layers" in config:  # Flux
        out = list(_rules(FLUX_TOP, "", ""))
        for i in range(config["num_layers"]):
            out += _rules(FLUX_DOUBLE, f"double_blocks.{i}.", f"transformer_blocks.{i}.")
        for i in range(config["num_single_layers"]):
            out += _rules(FLUX_SINGLE, f"single_blocks.{i}.", f"single_transformer_blocks.{i}.")
        return out
    out = [("pos_embed", ["pos_embed.pos_embed"], False), *_rules(SD3_TOP, "", "")]
    for i in range(config["num_layers"]):
        last = i == config["num_layers"] - 1  # the last block's context AdaLN is the continuous kind (swapped)
        context = [("context_block.adaLN_modulation.1",
                    ["swap:norm1_context.linear" if last else "norm1_context.linear"])]
        out += _rules(SD3_BLOCK + context, f"joint_blocks.{i}.", f"transformer_blocks.{i}.")
    return out


def to_original(state: dict, config) -> dict:
    import torch

    out = {}
    for original, keys, swap in plan(config):
        if all(k in state for k in keys):
            joined = torch.cat([state.pop(k) for k in keys], dim=0)
            out[original] = _swap(joined) if swap else joined
    if state:
        raise KeyError(f"no original name for {sorted(state)[:5]}")
    return out


def to_diffusers(original: dict, shapes: dict, config) -> dict:
    """The diffusers tensors of an original-layout state dict, split to the model's own shapes."""
    out = {}
    for key, keys, swap in plan(config):
        if key not in original or not all(k in shapes for k in keys):
            continue
        tensor = original.pop(key)
        tensor = _swap(tensor) if swap else tensor
        for k, part in zip(keys, tensor.split([shapes[k][0] if shapes[k] else 1 for k in keys], dim=0)):
            out[k] = part.reshape(shapes[k])
    missing = set(shapes) - set(out)
    if missing:
        raise KeyError(f"the checkpoint lacks {sorted(missing)[:5]} ({len(missing)} tensors in all)")
    return out


def read(path: Path, cls, config_folder: Path, dtype):
    """A transformer from an original-layout file (BFL's or Stability's names, with or without the
    `model.diffusion_model.` prefix; other parts of a full checkpoint are ignored) with the config of
    `config_folder`/transformer. diffusers' own reader assumes the full-size Flux widths."""
    import torch
    from safetensors.torch import load_file

    config = cls.load_config(config_folder, subfolder="transformer")
    with torch.device("meta"):
        model = cls.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    original = {k.removeprefix(PREFIX): v for k, v in load_file(str(path)).items()}
    model.load_state_dict(to_diffusers(original, shapes, config), assign=True, strict=True)
    return model.to(dtype).eval()


def write(model: Path, out: Path) -> Path:
    """The transformer of an SD3 or Flux folder as one original-layout file; every tensor accounted for."""
    from diffusers import DiffusionPipeline
    from safetensors.torch import save_file

    transformer = DiffusionPipeline.from_pretrained(model).transformer
    converted = to_original(dict(transformer.state_dict()), dict(transformer.config))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({PREFIX + k: v.contiguous() for k, v in converted.items()}, out)
    return out


def kohya_lora(state: dict, transformer) -> dict:
    """A kohya / ComfyUI LoRA on BFL's names (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`,
    `lora_te1_...` on CLIP) in diffusers' peft keys, its joined q/k/v split to the model's own widths
    (diffusers' converter assumes the full-size Flux) and alpha / rank folded into the up matrix."""
    shapes = {k: tuple(v.shape) for k, v in transformer.state_dict().items()}
    by_kohya = {"lora_unet_" + original.removesuffix(".weight").replace(".", "_"): keys
                for original, keys, _ in plan(dict(transformer.config)) if original.endswith(".weight")}
    out = {}
    for down_key in [k for k in state if k.endswith(".lora_down.weight")]:
        name = down_key.removesuffix(".lora_down.weight")
        down, up = state[down_key], state[f"{name}.lora_up.weight"]
        alpha = state.get(f"{name}.alpha")
        up = up * (float(alpha) / down.shape[0] if alpha is not None else 1.0)
        if name.startswith("lora_te1_"):
            module = name.removeprefix("lora_te1_").replace("text_model_encoder_layers_", "text_model.encoder.layers.")
            module = module.replace("_self_attn_", ".self_attn.").replace("_mlp_", ".mlp.")
            layer, rest = module.split(".self_attn." if ".self_attn." in module else ".mlp.", 1)
            joint = ".self_attn." if ".self_attn." in module else ".mlp."
            out[f"text_encoder.{layer}{joint}{rest}.lora_A.weight"] = down
            out[f"text_encoder.{layer}{joint}{rest}.lora_B.weight"] = up
            continue
        if name not in by_kohya:
            raise KeyError(f"LoRA key {name} names no layer of this Flux model")
        keys = [k.removesuffix(".weight") for k in by_kohya[name]]
        for key, part in zip(keys, up.split([shapes[k + ".weight"][0] for k in keys], dim=0)):
            out[f"transformer.{key}.lora_A.weight"] = down
            out[f"transformer.{key}.lora_B.weight"] = part
    return out
