"""A thin wrapper over HF `tokenizers`: train a byte-level BPE, or load a local tokenizer.json.

Trained tokenizers have fixed special ids: `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3,
`<|cv|>`=4, `<|jd|>`=5 (the template markers of `girl_jax.data.prompt`). Byte-level BPE never
needs `<unk>`; it is there so ids stay fixed whatever the vocabulary.

A loaded HF tokenizer keeps its own vocabulary (the model's embedding rows match it) and adds
nothing. Its specials are mapped, first match wins (a `tokenizer_config.json` beside it names
them explicitly and takes precedence):

- eos: `<eos>`, `</s>`, `<|endoftext|>`, `[SEP]`, `<|end_of_text|>`, `<|im_end|>`
- bos: `<bos>`, `<s>`, `<|begin_of_text|>`, `[CLS]`, else the eos
- pad: `<pad>`, `[PAD]`, `<|pad|>`, else the eos
Without an eos the load fails. Template markers a loaded tokenizer lacks are encoded as text.

`encode` never adds specials (no post-processor: BERT's [CLS]/[SEP] are not inserted); the
batching code places bos / eos itself.

`train(..., normalize="nfkc_lower")` adds a normaliser (Unicode NFKC, then lower case) that
runs before the byte-level pre-tokeniser, in training and in every later `encode`: "SQL" and
"sql", or a full-width "ＳＱＬ", get the same ids. The normaliser is saved in tokenizer.json,
so a loaded tokenizer (and `girl generate`) applies it too; a tokenizer.json without one loads
and encodes as before. The specials are added tokens matched on the raw text before
normalisation ("normalized": false), so each stays one id; their upper-case spellings
("<|CV|>") are ordinary text. Decoding gives the normalised (lower-case) text back.
`normalize="none"` (the default) trains exactly the tokenizer of earlier versions.
"""

import json
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from girl_jax import atomic
from girl_jax.errors import DataError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
CV_MARKER, JD_MARKER = "<|cv|>", "<|jd|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, CV_MARKER, JD_MARKER)  # index = fixed id when trained

_EOS_NAMES = (EOS, "</s>", "<|endoftext|>", "[SEP]", "<|end_of_text|>", "<|im_end|>")
_BOS_NAMES = (BOS, "<s>", "<|begin_of_text|>", "[CLS]")
_PAD_NAMES = (PAD, "[PAD]", "<|pad|>")
NORMALIZERS = ("none", "nfkc_lower")  # values of `tokenizer.normalize`


def make_normalizer(name: str):
    """The `tokenizers` normaliser called `name` (one of NORMALIZERS); None for "none"."""
    if name == "none":
        return None
    if name == "nfkc_lower":
        return normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    raise DataError(f"tokenizer.normalize must be one of {NORMALIZERS}, got {name!r}")


def _config_token(config: dict, key: str) -> str | None:
    value = config.get(key)
    if isinstance(value, dict):  # transformers writes AddedToken as {"content": ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """Text <-> token ids; special ids as properties; batch encoding through the Rust encoder."""

    def __init__(self, tk: tokenizers.Tokenizer, *, specials: dict[str, str | None] | None = None):
        self._tk = tk
        specials = specials or {}
        vocab = tk.get_vocab(with_added_tokens=True)

        def find(explicit, names):
            for name in ([explicit] if explicit else []) + list(names):
                if name in vocab:
                    return vocab[name]
            return None

        self._eos_id = find(specials.get("eos"), _EOS_NAMES)
        if self._eos_id is None:
            raise DataError(
                "tokenizer: no end-of-sequence token found; expected one of "
                + ", ".join(_EOS_NAMES)
                + " (or eos_token in tokenizer_config.json)"
            )
        bos = find(specials.get("bos"), _BOS_NAMES)
        pad = find(specials.get("pad"), _PAD_NAMES)
        self._bos_id = self._eos_id if bos is None else bos
        self._pad_id = self._eos_id if pad is None else pad
        self._special_ids = frozenset(
            {self._eos_id, self._bos_id, self._pad_id}
            | {vocab[name] for name in SPECIAL_TOKENS if name in vocab}
        )
        self.has_markers = CV_MARKER in vocab and JD_MARKER in vocab

    @classmethod
    def train(
        cls, texts, vocab_size: int = 8192, min_frequency: int = 2, normalize: str = "none"
    ) -> "Tokenizer":
        """Trains a byte-level BPE on an iterable of strings; special ids fixed, `normalize`
        one of NORMALIZERS (module doc)."""
        normalizer = make_normalizer(normalize)
        if vocab_size < len(SPECIAL_TOKENS) + 256:
            raise DataError(
                f"tokenizer: vocab_size={vocab_size} is below the {len(SPECIAL_TOKENS) + 256} "
                "ids that the specials and the 256 bytes need"
            )
        tk = tokenizers.Tokenizer(models.BPE())
        if normalizer is not None:
            tk.normalizer = normalizer
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        texts = list(texts)
        tk.train_from_iterator(texts, trainer=trainer, length=len(texts))
        return cls(tk)

    @classmethod
    def load(cls, path) -> "Tokenizer":
        """Loads `tokenizer.json` (the file, or a directory holding it) and maps its specials."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise DataError(f"{file}: no tokenizer.json found")
        try:
            tk = tokenizers.Tokenizer.from_file(str(file))
        except Exception as e:  # the Rust side raises a bare Exception on malformed JSON
            raise DataError(f"{file}: not a valid tokenizer.json ({str(e)[:120]})") from None
        specials = {}
        config_file = file.parent / "tokenizer_config.json"
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise DataError(f"{config_file}: malformed JSON ({str(e)[:80]})") from None
            if isinstance(config, dict):
                for key in ("eos", "bos", "pad"):
                    specials[key] = _config_token(config, f"{key}_token")
        return cls(tk, specials=specials)

    def save(self, path_dir) -> Path:
        """Writes `tokenizer.json` (+ a tokenizer_config.json naming the specials) atomically."""
        directory = Path(path_dir)
        directory.mkdir(parents=True, exist_ok=True)
        file = directory / "tokenizer.json"
        atomic.write_text(file, self._tk.to_str(pretty=False))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self._tk.id_to_token(self.bos_id),
            "eos_token": self._tk.id_to_token(self.eos_id),
            "pad_token": self._tk.id_to_token(self.pad_id),
        }
        atomic.write_text(directory / "tokenizer_config.json", json.dumps(config, indent=1))
        return file

    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def bos_id(self) -> int:
        return self._bos_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no specials added."""
        return self._tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts) -> list[list[int]]:
        """Token ids of many texts at once (Rust, parallel when TOKENIZERS_PARALLELISM allows)."""
        encodings = self._tk.encode_batch_fast(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def _cut(self, ids) -> list[int]:
        ids = [int(i) for i in ids]
        start = 0
        while start < len(ids) and ids[start] == self._bos_id:  # bos may equal eos (GPT-2)
            start += 1
        ids = ids[start:]
        if self._eos_id in ids:
            ids = ids[: ids.index(self._eos_id)]
        return [i for i in ids if i not in self._special_ids]

    def decode(self, ids) -> str:
        """Text of `ids`: leading bos skipped, stops at the first eos, other specials dropped."""
        return self._tk.decode(self._cut(ids), skip_special_tokens=True)

    def decode_batch(self, list_of_ids) -> list[str]:
        """`decode` over many sequences at once."""
        cut = [self._cut(ids) for ids in list_of_ids]
        return self._tk.decode_batch(cut, skip_special_tokens=True)
