"""What a generate-programs run would cost, said before it is run (``leap generate-programs --dry-run``): the
segments it would ask for (those the program cache answers are free), their prompts' tokens and the part of them
a provider's prompt caching can reuse, a reply's tokens, and the cost at the run's prices, live and through the
Batch API.

Tokens are estimated as characters / 4 (OpenAI's rule of thumb; a real tokenizer differs by some percent on the
prompt's JSON and class names: ``benchmarks/bench_generate.py`` counts them exactly where ``bpe-openai`` is
installed). A reply's tokens are the mean of the replies this output has paid for so far (its ledger), else
the mean of the exemplar programs' (the replies follow their form). Repair turns (a reply that fails validation
is asked once more, with the conversation so far) come on top, and are not in the estimate."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable


def text_tokens(text: str) -> int:
    """The estimated tokens of ``text`` (characters / 4)."""
    return max(1, round(len(text) / 4))


def chat_tokens(messages: list[dict], count=text_tokens) -> int:
    """Tokens of a chat prompt: the contents plus OpenAI's ~3 tokens of framing per message and 3 for the reply."""
    return sum(count(m["content"]) + 3 for m in messages) + 3


def cacheable(tokens: int) -> int:
    """The tokens of a prompt prefix of ``tokens`` that OpenAI's prompt caching can reuse: prompts of 1024 tokens or
    more, cached in 1024 + multiples of 128."""
    return 0 if tokens < 1024 else 1024 + (tokens - 1024) // 128 * 128


@dataclass
class CostEstimate:
    split: str
    pending: int            # segments the run would make (after --limit)
    answered: int           # of them, answered by the program cache (free)
    prompt_tokens: float    # mean per request
    prefix_tokens: int      # of them, the static prefix a provider's prompt caching can reuse
    reply_tokens: float     # mean per reply
    reply_from: str         # where reply_tokens comes from
    max_tokens: int
    price: Callable[[dict], float]  # USD of a request's usage (``GenerateConfig.cost``)
    prices: str             # the prices, as said
    refused: str | None = None  # the run's refusal of the output (other settings): pending is then every segment

    @property
    def asked(self) -> int:
        return self.pending - self.answered

    def cost(self, *, cached_prefix: bool = False, reply_tokens: float | None = None) -> float:
        """USD for the requests asked: with the prefix read from the provider's cache, or each reply of
        ``reply_tokens``."""
        usage = {"prompt_tokens": self.prompt_tokens, "cached_tokens": self.prefix_tokens if cached_prefix else 0,
                 "completion_tokens": self.reply_tokens if reply_tokens is None else reply_tokens}
        return self.price(usage) * self.asked

    def lines(self) -> list[str]:
        lines = [f"estimate: a run with these options is refused: {self.refused}; the figures below are those of "
                 "--force or another --out, which make every segment anew"] if self.refused else []
        if not self.pending:
            return lines + [f"estimate: nothing pending in {self.split}: a run would ask for nothing"]
        free = f" ({self.answered:,} answered by the program cache, free)" if self.answered else ""
        lines += [f"estimate: {self.pending:,} segments of {self.split} pending{free}: {self.asked:,} requests"]
        if not self.asked:
            return lines
        lines += [
            f"  prompt ~{self.prompt_tokens:,.0f} tokens each (characters / 4), of which " +
            (f"{self.prefix_tokens:,} a static prefix a provider's prompt caching can reuse" if self.prefix_tokens
             else "none a provider's prompt caching reuses (the static prefix is under its 1,024 tokens)"),
            f"  reply ~{self.reply_tokens:,.0f} tokens each ({self.reply_from}), at most --max-tokens "
            f"{self.max_tokens:,}",
            f"  cost at {self.prices}: ~{self.cost():,.2f} USD live, "
            f"~{self.cost(cached_prefix=True):,.2f} with the prefix cached, ~{self.cost() / 2:,.2f} through "
            f"--batch-file (half price); at most {self.cost(reply_tokens=self.max_tokens):,.2f} live if every reply "
            "ran to --max-tokens; repair turns of replies that fail validation come on top",
        ]
        return lines


def exemplar_reply_tokens(exemplars) -> float:
    """The mean tokens of the exemplar programs, as the prompt shows them (compact JSON)."""
    sizes = [text_tokens(json.dumps(e.program, separators=(",", ":"))) for e in exemplars]
    return sum(sizes) / len(sizes) if sizes else 0.0
