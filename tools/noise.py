"""The crate's seeded Gaussian stream (src/noise.rs) in pure Python.

ChaCha20 keyed by the seed (8 little-endian bytes + 24 zero bytes), nonce 0,
64-bit draws made of two consecutive 32-bit words (first word low), then
Box-Muller: u1 = ((a >> 11) + 1) / 2**53, u2 = (b >> 11) / 2**53,
r = sqrt(-2 ln u1), yielding r cos(2 pi u2) then r sin(2 pi u2), rounded to f32.
Used to feed reference pipelines the same initial latents as the Rust code.
"""

import math
import struct

import numpy as np

_MASK = 0xFFFFFFFF


def _rotl(x, n):
    return ((x << n) & _MASK) | (x >> (32 - n))


def _quarter(s, a, b, c, d):
    s[a] = (s[a] + s[b]) & _MASK; s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & _MASK; s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & _MASK; s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & _MASK; s[b] = _rotl(s[b] ^ s[c], 7)


def _chacha20_words(seed):
    key = struct.unpack("<8I", struct.pack("<Q", seed) + bytes(24))
    counter = 0
    while True:
        init = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574, *key,
                counter & _MASK, counter >> 32, 0, 0]
        s = list(init)
        for _ in range(10):
            _quarter(s, 0, 4, 8, 12); _quarter(s, 1, 5, 9, 13)
            _quarter(s, 2, 6, 10, 14); _quarter(s, 3, 7, 11, 15)
            _quarter(s, 0, 5, 10, 15); _quarter(s, 1, 6, 11, 12)
            _quarter(s, 2, 7, 8, 13); _quarter(s, 3, 4, 9, 14)
        for w, i in zip(s, init):
            yield (w + i) & _MASK
        counter += 1


def gaussian(seed, n):
    """The first n samples of the stream for `seed`, as float32."""
    words = _chacha20_words(seed)

    def draw():
        lo = next(words)
        return lo | (next(words) << 32)

    out = []
    while len(out) < n:
        a, b = draw(), draw()
        u1 = ((a >> 11) + 1) * 2.0**-53
        u2 = (b >> 11) * 2.0**-53
        r = math.sqrt(-2.0 * math.log(u1))
        out += [r * math.cos(2 * math.pi * u2), r * math.sin(2 * math.pi * u2)]
    return np.array(out[:n], dtype=np.float32)


def latents(seed, shape):
    return gaussian(seed, int(np.prod(shape))).reshape(shape)
