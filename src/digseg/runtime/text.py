"""Prompts -> encoder states for the onnxruntime pipeline, without transformers.

Either the exported CLIP text encoder (`text_encoder.onnx`) after the CLIP tokenizer read from `tokenizer.json`
by the `tokenizers` library (padded to the model's length with its pad token, as the PyTorch pipeline's
`CLIPTokenizer(..., padding="max_length", truncation=True)` does), or, for a folder exported with
`--no-text-encoder`, a lookup in the precomputed states of the model's own prompts (`text_features.npy`). SDXL's
graph takes both encoders' ids (`tokenizer.json`, `tokenizer_2.json`) and returns the packed states.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DigsegError


class OnnxPromptEncoder:
    """`encode(prompts)` -> float32 [N, L, D], each distinct prompt encoded once (cached)."""

    def __init__(self, folder: Path, text: dict, runner=None) -> None:
        self.runner = runner
        self._cache: dict[str, np.ndarray] = {}
        self.tokenizers = []
        if text["kind"] == "features":
            states = np.load(folder / text["features"], allow_pickle=False)  # [P, L, D]
            self._cache = {p: states[i] for i, p in enumerate(text["prompts"])}
            self.fixed = True
        else:
            from tokenizers import Tokenizer

            for facts in filter(None, (text["tokenizer"], text.get("tokenizer_2"))):
                tokenizer = Tokenizer.from_file(str(folder / facts["file"]))
                tokenizer.enable_truncation(max_length=int(facts["max_length"]))
                tokenizer.enable_padding(length=int(facts["max_length"]), pad_id=int(facts["pad_id"]),
                                         pad_token=facts["pad_token"])
                self.tokenizers.append(tokenizer)
            self.fixed = False

    def token_ids(self, prompts: Sequence[str], which: int = 0) -> np.ndarray:
        """[N, L] int64 token ids of tokenizer `which` (1: SDXL's second)."""
        return np.array([e.ids for e in self.tokenizers[which].encode_batch(list(prompts))], dtype=np.int64)

    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        for prompt in prompts:
            if not isinstance(prompt, str) or not prompt.strip():
                raise DigsegError(f"empty prompt {prompt!r}: give a class name or a phrase")
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing and self.fixed:
            known = ", ".join(repr(p) for p in list(self._cache)[:8])
            raise DigsegError(f"prompt {missing[0]!r}: this folder was exported with --no-text-encoder and holds only "
                              f"the model's own prompts ({known}, ...); export it with its text encoder for others")
        if missing:
            names = ("input_ids", "input_ids_2")
            feed = {names[i]: self.token_ids(missing, i) for i in range(len(self.tokenizers))}
            states = self.runner.run(None, feed)[0]  # [M, L, D]
            for prompt, state in zip(missing, states):
                self._cache[prompt] = state.astype(np.float32)
        return np.stack([self._cache[p] for p in prompts])  # [N, L, D]
