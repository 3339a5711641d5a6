"""Generator.generate with batches two at a time: the same JDs as one batch after another."""

import jax
from flax import nnx

from girl_jax.data.tokenizer import Tokenizer
from girl_jax.models.decoder import Decoder, DecoderConfig
from girl_jax.stages.generator import Generator

CVS = [f"cv {i}: python sql {'java ' * (i % 4)}berlin {i * 7}" for i in range(21)]


def test_generate_two_batches_at_a_time_equals_one_at_a_time():
    tok = Tokenizer.train(CVS * 3, vocab_size=300, min_frequency=1)
    cfg = DecoderConfig(
        family="gpt2",
        vocab_size=tok.vocab_size,
        max_len=64,
        d_model=32,
        num_layers=1,
        num_heads=2,
    )
    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
    texts = {}
    for workers in (1, 2):
        for greedy in (True, False):
            gen = Generator(
                graphdef,
                params,
                tok,
                max_prompt_len=32,
                max_new_tokens=12,
                greedy=greedy,
                batch_size=4,
                workers=workers,  # 21 CVs: 6 batches, the last padded
            )
            texts[workers, greedy] = gen.generate(CVS, jax.random.key(3))
    for greedy in (True, False):
        assert len(texts[1, greedy]) == len(CVS)
        assert texts[2, greedy] == texts[1, greedy]
    assert texts[1, True] != texts[1, False]  # sampling draws differ from greedy: not a no-op
