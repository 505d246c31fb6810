"""Token estimates before sending, for rate limits and routing.

No tokenizer is bundled: estimates are per character, by script, tuned to
current large-vocabulary (about 200k-token) BPE tokenizers and deliberately
on the high side for scripts the tokenizers handle poorly. A :class:`TokenCalibrator` per model
corrects them with the prompt sizes the provider reports back.

Rates, in tokens per character:

* Latin script (ASCII, and Latin with accents): about 4 characters a token.
* Thai: about 1 token per 1.25 characters (Thai has no spaces between words
  and splits into short pieces).
* CJK (Han, kana, Hangul): about 1 token a character.
* Other scripts (Cyrillic, Greek, Arabic, Devanagari, ...): about 2 characters a token.
* Anything else (emoji, symbols): 1 token a character.
"""

from __future__ import annotations

import math
import re

from .provider import Request

#: Tokens each chat message costs beyond its content (role and separators),
#: and the tokens that prime the reply, as chat APIs commonly count them.
MESSAGE_OVERHEAD = 4
REPLY_OVERHEAD = 3

_LATIN_EXTENDED = re.compile(r"[\u00a0-\u024f\u1e00-\u1eff]")
_THAI = re.compile(r"[\u0e00-\u0e7f]")
_CJK = re.compile(
    r"[\u1100-\u11ff\u2e80-\u2fdf\u3000-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    r"\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\U00020000-\U0003134f]"
)
_OTHER_SCRIPT = re.compile(r"[\u0250-\u0dff\u0e80-\u10ff\u1200-\u1dff\u1f00-\u1fff]")

_RATES = ((_LATIN_EXTENDED, 1 / 3), (_THAI, 1 / 1.25), (_CJK, 1.0), (_OTHER_SCRIPT, 1 / 2))
_ASCII_RATE = 1 / 4
_FALLBACK_RATE = 1.0


def estimate_tokens(text: str) -> int:
    """Estimated tokens in ``text`` (0 for the empty string, else at least 1)."""
    if not text:
        return 0
    if text.isascii():
        return max(1, math.ceil(len(text) * _ASCII_RATE))
    ascii_chars = len(text.encode("ascii", "ignore"))
    total = ascii_chars * _ASCII_RATE
    counted = ascii_chars
    for pattern, rate in _RATES:
        n = len(pattern.findall(text))
        total += n * rate
        counted += n
    total += (len(text) - counted) * _FALLBACK_RATE
    return max(1, math.ceil(total))


def estimate_request_tokens(request: Request) -> int:
    """Estimated prompt tokens of ``request``: contents plus per-message overhead."""
    content = sum(estimate_tokens(m.get("content") or "") for m in request.messages)
    return content + MESSAGE_OVERHEAD * len(request.messages) + REPLY_OVERHEAD


def estimate_tpm_cost(request: Request, calibrator: TokenCalibrator | None = None) -> int:
    """What a request counts against a tokens-per-minute limit before it is sent:
    the (calibrated) prompt estimate plus ``max_tokens``: a provider may reserve
    the whole ``max_tokens`` when the request arrives, so the limiter does too."""
    prompt = estimate_request_tokens(request)
    if calibrator is not None:
        prompt = calibrator.apply(prompt)
    return prompt + request.max_tokens


class TokenCalibrator:
    """A running correction factor for one model's prompt estimates.

    Keep one per model. After each reply call ``observe(estimated, actual)``
    with the estimate made before sending and the prompt tokens the provider
    reported; :meth:`apply` then scales later estimates. The factor is a
    decaying ratio of sums (large prompts weigh more than tiny ones), bounded
    to ``[low, high]`` so one odd reply cannot swing it far.
    """

    def __init__(self, *, low: float = 0.5, high: float = 3.0, decay: float = 0.8) -> None:
        if not 0 < low <= 1 <= high:
            raise ValueError("need 0 < low <= 1 <= high")
        if not 0 <= decay < 1:
            raise ValueError("need 0 <= decay < 1")
        self.low, self.high, self.decay = low, high, decay
        self._actual = 0.0
        self._estimated = 0.0
        self.observations = 0

    @property
    def factor(self) -> float:
        """Actual / estimated, bounded; 1.0 before the first observation."""
        if self._estimated <= 0:
            return 1.0
        return min(self.high, max(self.low, self._actual / self._estimated))

    def observe(self, estimated_prompt: int, actual_prompt: int) -> None:
        """Record one reply; ignored unless both numbers are positive."""
        if estimated_prompt <= 0 or actual_prompt <= 0:
            return
        self._actual = self._actual * self.decay + actual_prompt
        self._estimated = self._estimated * self.decay + estimated_prompt
        self.observations += 1

    def apply(self, estimate: int) -> int:
        """``estimate`` corrected by the current factor (rounded up)."""
        return math.ceil(estimate * self.factor) if estimate > 0 else 0

    def __repr__(self) -> str:
        return f"TokenCalibrator(factor={self.factor:.3f}, observations={self.observations})"
