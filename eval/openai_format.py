"""Write a CLIPDualEncoder's weights in OpenAI CLIP's state-dict layout (the keys of ViT-B-16.pt's state dict),
so a model trained here loads through `model.pretrained` exactly as OpenAI's file does (engine/model/weights.py).

    python -m eval.openai_format --model RUN_DIR/final --out clip.pt

The inverse of engine/model/weights.py's renaming: q/k/v are stacked into in_proj, the projections transposed back to
(width, E). The result is a plain dict of fp32 tensors saved with torch.save (readable with weights_only=True).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from data.cli_errors import error_boundary
from data.outputs import atomic_file, check_output_file, output_argument
from engine.model import CLIPDualEncoder
from engine.runtime.checkpoint import CheckpointError, load_exported_model, resolve_tag_dir

_RENAMES = {
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "logit_scale": "logit_scale",
}
_NORMS = {
    "vision_model.pre_layrnorm": "visual.ln_pre",
    "vision_model.post_layernorm": "visual.ln_post",
    "text_model.final_layer_norm": "ln_final",
}
_BLOCK_PARTS = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_BLOCK = re.compile(r"^(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def openai_state_dict(model: CLIPDualEncoder) -> dict[str, torch.Tensor]:
    """Our parameter names -> OpenAI's, every tensor fp32 on the CPU."""
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _RENAMES:
            out[_RENAMES[key]] = value
        elif key == "visual_projection.weight":
            out["visual.proj"] = value.t().contiguous()  # OpenAI stores (width, E)
        elif key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
        elif (norm := key.rpartition(".")[0]) in _NORMS:
            out[f"{_NORMS[norm]}.{key.rpartition('.')[2]}"] = value
        elif match := _BLOCK.match(key):
            prefix = ("visual." if match[1] == "vision_model" else "") + f"transformer.resblocks.{match[2]}."
            part = match[3]
            if part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                continue  # stacked below
            if part not in _BLOCK_PARTS:
                raise KeyError(f"no OpenAI name for {key}")
            out[f"{prefix}{_BLOCK_PARTS[part]}.{match[4]}"] = value
        else:
            raise KeyError(f"no OpenAI name for {key}")
    for tower, prefix in (("vision_model", "visual."), ("text_model", "")):
        for index in range(len(getattr(model, tower).encoder.layers)):
            base = f"{tower}.encoder.layers.{index}.self_attn"
            for kind in ("weight", "bias"):
                stacked = [state[f"{base}.{name}.{kind}"] for name in ("q_proj", "k_proj", "v_proj")]
                out[f"{prefix}transformer.resblocks.{index}.attn.in_proj_{kind}"] = torch.cat(stacked, dim=0)
    return out


def save_openai_format(model: CLIPDualEncoder, path: Path) -> None:
    """Writes beside the target and renames, so an interrupted save never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as partial:
        torch.save(openai_state_dict(model), partial)


@error_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.openai_format", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        required=True,
        help="an exported model folder (RUN_DIR/final), a checkpoint, or a weights file (an authors' .pth checkpoint)",
    )
    output_argument(parser, "--out", kind="file", required=True, help="the .pt file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out (never the --model input)")
    args = parser.parse_args(argv)
    try:  # the folder the weights are read from; a run folder's other files may take the output beside them
        source = resolve_tag_dir(args.model)
    except CheckpointError:
        source = Path(args.model)  # named again, in full, by the load below
    check_output_file(args.out, flag="--out", overwrite=args.overwrite, protect=[source])
    try:
        model, _ = load_exported_model(args.model)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    save_openai_format(model, args.out)
    print(
        f"wrote {args.out} (OpenAI CLIP state-dict layout, {sum(v.numel() for v in model.parameters()):,} parameters)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
