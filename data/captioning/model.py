"""A local vision-language model that captions a batch of images, through transformers alone.

Any family transformers supports natively for image-text-to-text (Qwen2-VL, Qwen2.5-VL, LLaVA, ...) loads
with AutoProcessor + AutoModelForImageTextToText from a folder in `save_pretrained` layout, never from a hub.
The prompt is the model's own chat template around one image and the instruction; prompts are left-padded
so a batch generates together. Decoding follows this run's settings, not the folder's generation_config.json
(only its end-of-sequence and padding tokens are kept), so the same command gives the same captions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from data.captioning.instructions import CaptioningError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 160  # an MLLM's static LUPerson caption is about 60-100 tokens
    temperature: float = 0.0  # 0 = greedy; > 0 samples, seeded per batch
    top_p: float = 1.0  # nucleus sampling, used only when temperature > 0
    repetition_penalty: float = 1.0  # 1.0 = none

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise CaptioningError(f"max_new_tokens must be > 0 (got {self.max_new_tokens})")
        if self.temperature < 0:
            raise CaptioningError(f"temperature must be >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise CaptioningError(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.repetition_penalty <= 0:
            raise CaptioningError(f"repetition_penalty must be > 0 (got {self.repetition_penalty})")


def resolve_device(device: str) -> torch.device:
    """auto: this process's GPU (LOCAL_RANK under torchrun or the deepspeed launcher) if there is one, else the CPU."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU, fp32 on the CPU (where bf16 matmuls are slow and fp16 ones unsupported)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


class LocalCaptioner:
    def __init__(self, model, processor, *, device: torch.device, dtype: torch.dtype):
        self.model, self.processor, self.device, self.dtype = model, processor, device, dtype
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"  # generation continues every prompt from its last token
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_token_id = tokenizer.pad_token_id
        self.eos_token_id = model.generation_config.eos_token_id or tokenizer.eos_token_id

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", dtype: str = "auto") -> LocalCaptioner:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise CaptioningError(
                f"no model at {path}: expected a local transformers folder (save_pretrained layout) with config.json"
            )
        from transformers import AutoModelForImageTextToText, AutoProcessor

        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        try:
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=torch_dtype)
        except (OSError, ValueError, KeyError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CaptioningError(
                f"cannot load {path} as an image-text-to-text model that transformers supports natively: {first_line}"
            ) from None
        if not hasattr(processor, "tokenizer") or not getattr(processor, "chat_template", None):
            raise CaptioningError(f"the processor in {path} has no tokenizer or no chat template to build prompts with")
        model.to(torch_device).eval()
        return cls(model, processor, device=torch_device, dtype=torch_dtype)

    def prompt(self, instruction: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @torch.inference_mode()
    def caption(
        self, images: list[Image.Image], instructions: list[str], *, decoding: Decoding, seed: int
    ) -> list[str]:
        """One caption per (image, instruction), whitespace collapsed to single spaces; "" when nothing was said."""
        from transformers import GenerationConfig

        inputs = self.processor(
            text=[self.prompt(text) for text in instructions], images=images, padding=True, return_tensors="pt"
        )
        inputs = inputs.to(self.device, dtype=self.dtype)  # casts only the floating tensors (pixel values)
        sampling = decoding.temperature > 0
        config = GenerationConfig(
            max_new_tokens=decoding.max_new_tokens,
            do_sample=sampling,
            temperature=decoding.temperature if sampling else None,
            top_p=decoding.top_p if sampling else None,
            top_k=None,
            repetition_penalty=decoding.repetition_penalty,
            bos_token_id=self.model.generation_config.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )
        if sampling:
            torch.manual_seed(seed)
        generated = self.model.generate(**inputs, generation_config=config)  # (B, prompt + new tokens)
        new_tokens = generated[:, inputs["input_ids"].shape[1] :].cpu()  # host sync: once per batch
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return [" ".join(text.split()) for text in texts]
