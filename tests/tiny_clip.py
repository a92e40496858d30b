"""A tiny, random CLIP checkpoint written to a folder, loadable through transformers' real path.

No download: a small ``CLIPConfig``, ``save_pretrained``, and a minimal but genuine CLIP byte-level
BPE vocabulary (every byte symbol, with and without the end-of-word marker, plus a few merges),
``tokenizer_config.json`` and ``preprocessor_config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("o", "r"), ("e", "r</w>"), ("c", "a"), ("d", "o")]


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible byte-to-unicode table, in its canonical order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer(folder: Path) -> int:
    """Write vocab.json, merges.txt and tokenizer_config.json; returns the vocabulary size."""
    symbols = _byte_symbols()
    vocab_list = symbols + [s + "</w>" for s in symbols]
    vocab_list += ["".join(pair) for pair in _MERGES]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in _MERGES) + "\n"
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "do_lower_case": True,
            }
        ),
        encoding="utf-8",
    )
    return len(vocab)


#: ViT-L/14's real dimensions (openai/clip-vit-large-patch14): the same FLOPs as the served model.
VIT_L14 = {
    "text": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
    },
    "vision": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "patch_size": 14,
    },
    "projection_dim": 768,
    # The real vocabulary's size: our small tokenizer only emits ids below it, at the same cost per token.
    "vocab_size": 49408,
}
TINY = {
    "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
    "vision": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "patch_size": 32,
    },
    "projection_dim": 24,
}


def write_tiny_clip(folder: Path, *, image_size: int = 224, seed: int = 0) -> Path:
    """A random CLIP with ViT-L/14's structure shrunk (patch 32, 2 layers, width 32) into ``folder``."""
    return write_clip_checkpoint(folder, TINY, image_size=image_size, seed=seed)


def write_clip_checkpoint(
    folder: Path, dims: dict[str, object], *, image_size: int = 224, seed: int = 0
) -> Path:
    """A random CLIP of the given dimensions (``TINY`` or ``VIT_L14``) with working tokenizer files."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(folder)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    text: dict[str, object] = dict(dims["text"])  # type: ignore[call-overload]
    vision: dict[str, object] = dict(dims["vision"])  # type: ignore[call-overload]
    config = CLIPConfig(
        text_config={
            **text,
            "vocab_size": max(vocab_size, int(dims.get("vocab_size", 0))),  # type: ignore[call-overload]
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={**vision, "image_size": image_size},
        projection_dim=dims["projection_dim"],
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "do_resize": True,
                "size": {"shortest_edge": image_size},
                "resample": 3,
                "do_center_crop": True,
                "crop_size": {"height": image_size, "width": image_size},
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": OPENAI_CLIP_MEAN,
                "image_std": OPENAI_CLIP_STD,
                "do_convert_rgb": True,
            }
        ),
        encoding="utf-8",
    )
    return folder
