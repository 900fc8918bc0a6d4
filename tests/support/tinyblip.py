"""Tiny random BLIP models saved by ``save_pretrained``: no download, built in well under a second.

Every token id is a real entry of the tiny vocabulary: ``vocab_size`` is the tokenizer's length and the
decoder's BOS is a ``[DEC]`` token of that vocabulary (the real checkpoints add ``[DEC]`` as id 30522 on top
of bert-base-uncased's 30,522 entries). So whatever the random decoder generates decodes to words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

__all__ = ["make_tiny_blip", "TASK_CLASSES"]

TASK_CLASSES = {"itm": "BlipForImageTextRetrieval", "caption": "BlipForConditionalGeneration",
                "vqa": "BlipForQuestionAnswering"}
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = """
a an the of in on at to with and or is are was be it this that what which who how many where there
photo picture image painting drawing view close up small large big tiny old new young red green blue
yellow orange purple black white brown pink grey gray dark light bright colorful man woman person people
child children boy girl baby dog dogs cat cats bird birds horse cow sheep bear elephant giraffe zebra
fish car cars bus truck train plane airplane boat bike bicycle motorcycle street road city building
house room kitchen bedroom bathroom table chair sofa couch bed window door wall floor tree trees grass
field park beach sea ocean water river lake mountain sky cloud clouds sun snow rain night day sunset
food pizza cake sandwich plate bowl cup glass bottle fruit apple banana orange flower flowers garden
sitting standing walking running playing eating holding looking riding flying lying sleeping
wearing next near front behind top under over inside outside two three four five one yes no
some group pair side down its his her their they he she shirt hat dress ball phone laptop book sign
clock umbrella bag kite skateboard surfboard frisbee tennis racket game sport team field square circle
""".split()
_PIECES = list("abcdefghijklmnopqrstuvwxyz0123456789") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
_PUNCT = list(".,?!'-")


def _vocab() -> list[str]:
    seen: dict[str, None] = {}
    for token in _SPECIALS + _PUNCT + _PIECES + _WORDS:
        seen.setdefault(token, None)
    return list(seen)


def make_tiny_blip(folder: Path, task: Literal["itm", "caption", "vqa"], seed: int = 0) -> Path:
    """Write a random tiny BLIP model of ``task`` and its BlipProcessor into ``folder``; returns ``folder``."""
    import torch
    import transformers
    from transformers import BertTokenizer, BlipConfig, BlipImageProcessor, BlipProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(_vocab()) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(vocab_file), bos_token="[DEC]", model_max_length=64)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)

    text_config = dict(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id, sep_token_id=tokenizer.sep_token_id, eos_token_id=tokenizer.sep_token_id,
    )
    vision_config = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                         image_size=32, patch_size=8, initializer_range=0.02)  # 1e-10 by default: images alike
    config = BlipConfig(text_config=text_config, vision_config=vision_config, image_text_hidden_size=16,
                        projection_dim=16)
    torch.manual_seed(seed)
    model = getattr(transformers, TASK_CLASSES[task])(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
