"""A tiny randomly initialised vision-language model of a family transformers supports natively, in the folder
layout of a real one (config, safetensors weights, tokenizer, image processor, chat template), built offline.

    python -m data.captioning.tiny_model --out DIR [--family qwen2_vl|llava]

Its captions are gibberish; it exists so that the captioning path (loading, prompts, batched generation,
resumption, sharding) runs end to end in tests and CPU measurements without a multi-GB download. The tokenizer
is a byte-level BPE trained here on the instruction texts, with the family's special tokens."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from data.captioning.instructions import DEFAULT_INSTRUCTIONS, load_instructions
from data.cli_errors import error_boundary
from data.outputs import atomic_folder, check_output_folder, output_argument

FAMILIES = ("qwen2_vl", "llava")
VOCAB_SIZE = 512
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")
QWEN_MEDIA = ("<|image_pad|>", "<|video_pad|>")
LLAVA_SPECIAL = ("<pad>", "<s>", "</s>", "<image>")

# Minimal chat templates in each family's own format: one user turn holding the image, then the assistant's turn.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _bpe(special_tokens: tuple[str, ...]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    instructions = load_instructions(DEFAULT_INSTRUCTIONS)
    corpus = [instructions.static, instructions.dynamic, *instructions.templates]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def _qwen2_vl(out: Path) -> None:
    from transformers import (
        Qwen2TokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=_bpe(QWEN_SPECIAL + QWEN_MEDIA), eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL[1:] + QWEN_MEDIA)})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL + QWEN_MEDIA}
    # 28 px = one merged 2x2 group of 14 px patches; at most 4 groups keeps a 128x64 pedestrian at 4 image tokens
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=4 * 28 * 28)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},  # sums to head_dim / 2 = 8
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)  # hidden_size: the LM's width
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    Qwen2VLForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)


def _llava(out: Path) -> None:
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_bpe(LLAVA_SPECIAL),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        model_input_names=["input_ids", "attention_mask"],  # as Llama's tokenizer: LLaVA takes no token_type_ids
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in LLAVA_SPECIAL}
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",  # drop CLS: 2x2 = 4 image tokens
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    text = dict(
        model_type="llama",
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids["<image>"],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        pad_token_id=ids["<pad>"],
    )
    LlavaForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)


TOOL = "python -m data.captioning.tiny_model"


def build_tiny_model(out: str | Path, *, family: str = "qwen2_vl", seed: int = 0, overwrite: bool = False) -> Path:
    """Writes the model folder to `out` and returns it; the same seed gives the same weights. An existing non-empty
    `out` is replaced only with `overwrite`, and then whole (built beside it and renamed over it), never file by
    file; a folder that another tool wrote is never replaced."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)} (got {family!r})")
    out = Path(out)
    check_output_folder(out, flag="--out", overwrite=overwrite, tool=TOOL)
    torch.manual_seed(seed)
    with atomic_folder(out, tool=TOOL) as partial:
        {"qwen2_vl": _qwen2_vl, "llava": _llava}[family](partial)
    return out


@error_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.captioning.tiny_model", description=__doc__.split("\n\n")[0])
    output_argument(parser, "--out", kind="folder", required=True, help="folder to write the model to (new or empty)")
    parser.add_argument("--family", choices=FAMILIES, default="qwen2_vl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out whole")
    args = parser.parse_args(argv)
    build_tiny_model(args.out, family=args.family, seed=args.seed, overwrite=args.overwrite)
    print(f"tiny {args.family} model written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
