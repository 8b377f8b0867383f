"""Writing a diffusers Stable Diffusion 1.x or SDXL folder (SD3 and Flux: flow_checkpoint) as one
original-layout (LDM / sgm / A1111) .safetensors checkpoint: how the single-file loading path is exercised
offline with the demo models. Users bring their own checkpoints; this is only the way to make one here."""

from pathlib import Path

from . import families

RESNET_NAMES = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(key: str, prefixes: dict[str, str]) -> tuple[str, str] | None:
    """(the matched diffusers prefix, the key with it replaced); longest prefix first."""
    for old, new in sorted(prefixes.items(), key=lambda item: -len(item[0])):
        if key.startswith(old + "."):
            return old, new + key[len(old):]
    return None


def unet_keys(state: dict, config) -> dict:
    levels, per_block = len(config.block_out_channels), config.layers_per_block
    prefixes = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",  # SDXL
                "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
                "mid_block.attentions.0": "middle_block.1"}
    for j in range(2):
        prefixes[f"mid_block.resnets.{j}"] = f"middle_block.{2 * j}"
    for i in range(levels):
        for j in range(per_block):
            block = 1 + i * (per_block + 1) + j
            prefixes[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{block}.0"
            prefixes[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{block}.1"
        for j in range(per_block + 1):
            block = i * (per_block + 1) + j
            prefixes[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{block}.0"
            prefixes[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{block}.1"
        if i < levels - 1:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(i + 1) * (per_block + 1)}.0.op"
            has_attention = any(k.startswith(f"up_blocks.{i}.attentions.") for k in state)
            prefixes[f"up_blocks.{i}.upsamplers.0"] = \
                f"output_blocks.{i * (per_block + 1) + per_block}.{2 if has_attention else 1}"
    out = {}
    for key, value in state.items():
        matched = _rename(key, prefixes)
        if matched is None:
            raise KeyError(f"no original name for UNet key {key}")
        old, new = matched
        if "resnets" in old:
            for a, b in RESNET_NAMES:
                new = new.replace(f".{a}.", f".{b}.")
        out["model.diffusion_model." + new] = value
    return out


def vae_keys(state: dict, config) -> dict:
    levels = len(config.block_out_channels)
    prefixes = {"conv_norm_out": "norm_out", "mid_block.attentions.0": "mid.attn_1"}
    for j in range(2):
        prefixes[f"mid_block.resnets.{j}"] = f"mid.block_{j + 1}"
    for i in range(levels):
        for j in range(config.layers_per_block):
            prefixes[f"down_blocks.{i}.resnets.{j}"] = f"down.{i}.block.{j}"
        for j in range(config.layers_per_block + 1):
            prefixes[f"up_blocks.{i}.resnets.{j}"] = f"up.{levels - 1 - i}.block.{j}"
        if i < levels - 1:
            prefixes[f"down_blocks.{i}.downsamplers.0"] = f"down.{i}.downsample"
            prefixes[f"up_blocks.{i}.upsamplers.0"] = f"up.{levels - 1 - i}.upsample"
    out = {}
    for key, value in state.items():
        part, rest = key.split(".", 1)  # encoder, decoder, quant_conv, post_quant_conv
        matched = _rename(rest, prefixes) if part in ("encoder", "decoder") else None
        if matched is not None:
            old, rest = matched
            rest = rest.replace(".conv_shortcut.", ".nin_shortcut.")
            if old.startswith("mid_block.attentions"):
                for a, b in VAE_ATTENTION_NAMES.items():
                    rest = rest.replace(f".{a}.", f".{b}.")
                if value.ndim == 2:  # the original VAE attention is made of 1×1 convolutions
                    value = value[:, :, None, None]
        out[f"first_stage_model.{part}.{rest}"] = value
    return out


def clip_keys(state: dict, prefix: str) -> dict:
    """A transformers CLIP text encoder under `prefix` (transformers 5 dropped the text_model prefix)."""
    return {prefix + (key if key.startswith("text_model.") else "text_model." + key): value
            for key, value in state.items()}


OPEN_CLIP_NAMES = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                   "text_model.embeddings.position_embedding.weight": "positional_embedding",
                   "text_model.final_layer_norm.weight": "ln_final.weight",
                   "text_model.final_layer_norm.bias": "ln_final.bias"}
OPEN_CLIP_LAYER_NAMES = [("text_model.encoder.layers.", "transformer.resblocks."), (".self_attn.", ".attn."),
                         (".layer_norm1.", ".ln_1."), (".layer_norm2.", ".ln_2."), (".mlp.fc1.", ".mlp.c_fc."),
                         (".mlp.fc2.", ".mlp.c_proj.")]


def open_clip_keys(state: dict, prefix: str) -> dict:
    """A transformers CLIP encoder with projection in OpenCLIP's layout (SDXL's second encoder):
    q/k/v joined into one in_proj, the projection as a matrix text is multiplied by."""
    import torch

    out = {}
    for key, value in state.items():
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T
        elif key in OPEN_CLIP_NAMES:
            out[prefix + OPEN_CLIP_NAMES[key]] = value
        elif ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
            continue  # joined with q below
        elif key.startswith("text_model.encoder.layers."):
            new = key
            for a, b in OPEN_CLIP_LAYER_NAMES:
                new = new.replace(a, b)
            if ".q_proj." in key:
                kind = key.rsplit(".", 1)[1]  # weight | bias
                parts = [state[key.replace(".q_proj.", f".{p}_proj.")] for p in "qkv"]
                out[prefix + new.replace(f".q_proj.{kind}", f".in_proj_{kind}")] = torch.cat(parts)
            else:
                out[prefix + new] = value
    return out


def write(model: Path, out: Path) -> Path:
    from diffusers import DiffusionPipeline
    from safetensors.torch import save_file

    if families.of_folder(Path(model)).flow_matching:
        from . import flow_checkpoint

        return flow_checkpoint.write(model, out)
    pipe = DiffusionPipeline.from_pretrained(model)
    state = {**unet_keys(pipe.unet.state_dict(), pipe.unet.config),
             **vae_keys(pipe.vae.state_dict(), pipe.vae.config)}
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL (sgm's conditioner)
        state.update(clip_keys(pipe.text_encoder.state_dict(), "conditioner.embedders.0.transformer."))
        state.update(open_clip_keys(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    else:
        state.update(clip_keys(pipe.text_encoder.state_dict(), "cond_stage_model.transformer."))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, out)
    return out
