"""What a generate-programs run would cost, said before it is run (``leap generate-programs --dry-run``): the
segments it would ask for (those the program cache answers are free), their prompts' tokens and the part of them
a provider's prompt caching can reuse, a reply's tokens, and the cost at the run's prices, live and through the
Batch API.

Tokens are estimated as characters / 4 (OpenAI's rule of thumb; a real tokenizer differs by some percent on the
prompt's JSON and class names: ``benchmarks/bench_generate.py`` counts them exactly where ``bpe-openai`` is
installed). A reply's tokens are the mean of the replies this output has paid for so far (its ledger), else
the mean of the exemplar programs' (the replies follow their form). A reply that fails validation is asked again
(``--repair-rounds`` turns, each re-sending the first prompt, the replies so far and their findings): the estimate
counts these repair turns at the rate measured on the replies paid for this output's records, else on those of the
model in the program cache; where none is paid yet it counts none and says what they would cost at most (every
reply needing all its turns)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from leap_cli.common import counted


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


FRAMING = 6  # tokens a repair turn adds to the conversation besides the reply and the findings (two messages)


@dataclass(frozen=True)
class RepairTurns:
    """The repair turns a run pays for besides its first requests: ``rate`` per first request (None: nothing paid
    yet to measure it from, so the estimate counts none and bounds them by every reply needing ``rounds``)."""
    rounds: int                # --repair-rounds
    rate: float | None         # repair turns per first reply, measured
    source: str                # where the rate and the sizes come from
    extra_prompt: float        # a repair turn's prompt tokens beyond the first prompt (replies and findings): mean
    reply_tokens: float        # a repair turn's reply: mean

    @property
    def per_request(self) -> float:
        return self.rounds if self.rate is None else self.rate


def measured_repairs(rows: list[tuple], rounds: int, findings_frame: int, source: str) -> RepairTurns | None:
    """The repair rate and sizes of paid turns (``ProgramStore.paid_turns``' rows: narration id, round, prompt
    and completion tokens, characters of the findings), None without a paid first reply. The rate: the replies
    with findings at a round below ``rounds``, each of which asks a repair turn, per first reply (not the repair
    turns logged: a run with fewer --repair-rounds, or none, sent fewer than these settings would). A repair turn's
    prompt is the measured mean beyond a first prompt's where the endpoint reported prompt tokens, else the first
    reply and its findings (``findings_frame``: the repair message's tokens besides the findings) added up per
    round."""
    first = [r for r in rows if r[1] == 0]
    repairs = [r for r in rows if r[1] >= 1]
    asked = [r for r in rows if r[1] < rounds and r[4]]  # (each is followed by turn round + 1)
    if not first:
        return None
    first_reply = _mean([r[3] for r in first])
    reply = _mean([r[3] for r in repairs]) or first_reply
    if repairs and all(r[2] for r in repairs) and all(r[2] for r in first):
        extra = max(0.0, _mean([r[2] for r in repairs]) - _mean([r[2] for r in first]))
    else:  # (an endpoint that counts no prompt tokens, or no repair turn paid yet)
        findings = findings_frame + _mean([r[4] / 4 for r in asked])
        extra = _mean([(r[1] + 1) * (first_reply + findings + FRAMING) for r in asked])
    return RepairTurns(rounds, len(asked) / len(first), f"{counted(len(asked), 'repair turn', sep=True)} to the "
                       f"{counted(len(first), 'first reply', 'first replies', sep=True)} paid for {source}", extra,
                       reply)


def repair_bound(rounds: int, reply_tokens: float, findings_tokens: int) -> RepairTurns:
    """Every reply needing its ``rounds`` repair turns, turn r re-sending r replies and their findings."""
    return RepairTurns(rounds, None, "", (rounds + 1) / 2 * (reply_tokens + findings_tokens + FRAMING), reply_tokens)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


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
    repairs: RepairTurns | None = None  # None: --repair-rounds 0, no repair turn
    left_out: str | None = None  # segments made from a video replaced since, not counted (``generate.left_out_line``)

    @property
    def asked(self) -> int:
        return self.pending - self.answered

    def cost(self, *, cached_prefix: bool = False, reply_tokens: float | None = None) -> float:
        """USD for the requests asked: with the prefix read from the provider's cache, or each reply of
        ``reply_tokens``."""
        usage = {"prompt_tokens": self.prompt_tokens, "cached_tokens": self.prefix_tokens if cached_prefix else 0,
                 "completion_tokens": self.reply_tokens if reply_tokens is None else reply_tokens}
        return self.price(usage) * self.asked

    @property
    def repair_requests(self) -> float:
        """The repair turns the requests asked get: at the measured rate, or all of them where none is measured."""
        return self.repairs.per_request * self.asked if self.repairs else 0.0

    def repair_cost(self, *, cached_prefix: bool = False) -> float:
        """USD for the repair turns (``repair_requests``), their static prefix read from the provider's cache or
        not."""
        if not self.repairs:
            return 0.0
        usage = {"prompt_tokens": self.prompt_tokens + self.repairs.extra_prompt,
                 "cached_tokens": self.prefix_tokens if cached_prefix else 0,
                 "completion_tokens": self.repairs.reply_tokens}
        return self.price(usage) * self.repair_requests

    def lines(self) -> list[str]:
        lines = [f"estimate: a run with these options is refused: {self.refused}; the figures below are those of "
                 "--force or another --out, which make every segment anew"] if self.refused else []
        if self.left_out:
            lines.append(f"estimate: {self.left_out}")
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
        ]
        most = (f"at most {self.cost(reply_tokens=self.max_tokens):,.2f} live if every reply ran to --max-tokens"
                + (" (a cut reply gets no repair turn)" if self.repairs else ""))
        first = (f"  cost at {self.prices}: ~{self.cost():,.2f} USD live, ~{self.cost(cached_prefix=True):,.2f} with "
                 f"the prefix cached, ~{self.cost() / 2:,.2f} through --batch-file (half price)")
        r = self.repairs
        if r is None:
            return lines + [f"{first}; {most}"]
        turns = self.repair_requests
        turns = f"{turns:,.0f}" if turns >= 10 or turns == int(turns) else f"{turns:.1f}"
        sizes = (f"prompt ~{self.prompt_tokens + r.extra_prompt:,.0f} tokens (the first prompt and "
                 f"~{r.extra_prompt:,.0f} of replies and findings), reply ~{r.reply_tokens:,.0f}")
        if r.rate is None:
            return lines + [
                f"{first}, counting no repair turn: nothing is paid yet to measure how many replies fail validation; "
                f"{most}",
                f"  repair turns: if every reply needed its {r.rounds} (--repair-rounds), {turns} more requests, "
                f"{sizes} tokens each: at most ~{self.repair_cost():,.2f} USD more live, "
                f"~{self.repair_cost(cached_prefix=True):,.2f} with the prefix cached"]
        repair, cached = self.repair_cost(), self.repair_cost(cached_prefix=True)
        return lines + [
            f"  repair turns: ~{r.rate:.3f} per request ({r.source}; --repair-rounds {r.rounds}): "
            f"~{turns} more requests" + (f", {sizes} tokens each" if r.rate else ""),
            f"  cost at {self.prices}: ~{self.cost() + repair:,.2f} USD live (~{repair:,.2f} of it repair turns), "
            f"~{self.cost(cached_prefix=True) + cached:,.2f} with the prefix cached, "
            f"~{self.cost() / 2 + repair:,.2f} through --batch-file (half price; its repair turns at the live price, "
            f"sent by --retry-errors); {most}"]


def exemplar_reply_tokens(exemplars) -> float:
    """The mean tokens of the exemplar programs, as the prompt shows them (compact JSON)."""
    sizes = [text_tokens(json.dumps(e.program, separators=(",", ":"))) for e in exemplars]
    return sum(sizes) / len(sizes) if sizes else 0.0
