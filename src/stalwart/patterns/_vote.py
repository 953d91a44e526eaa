"""Voting with a quorum: ``await sw.vote(ctx, voters, task, quorum=k)``.

Every voter is asked the same task at once (``ctx.gather``); each answer is a *ballot*.
Ballots are tallied by their canonical form (JSON with sorted keys, or ``key(answer)``
when given), and the answer with the most votes wins if it has at least ``quorum`` of
them and no other answer has as many. Otherwise there is no quorum:
:class:`~stalwart.errors.NoQuorumError` (or an escalation, ``escalate="dlq"``).

**Fault tolerance.** With ``n = 2f + 1`` voters and the default quorum, a majority
(``f + 1``), the vote's answer is right whenever the ``f + 1`` or more voters that are
not faulty agree, whatever the ``f`` faulty ones do: crash (no ballot), answer wrong
(a ballot for another answer), or answer garbage (an invalid ballot). ``f`` wrong
voters can never reach ``f + 1`` votes, and can never outvote ``f + 1`` right ones. The
converse is the limit: with ``f + 1`` faulty voters agreeing on a wrong answer, it wins.
A voter that fails or whose answer does not validate as ``output_type`` *abstains*.

With independent voters each right with probability ``p > 1/2``, the majority is right
with the binomial probability ``sum_{k > n/2} C(n, k) p^k (1-p)^(n-k)`` (0.837 for five
voters at 0.7): ``bench/bench_semantic.py`` measures it.

Each voter's answer is journaled (an agent's model turns, a function's step ``vote:NAME``)
and so is the tally (the step ``vote:tally``: quorum, tally, winner, each ballot, and a
semantic failure for each voter that dissented or abstained), so a resumed run asks no
voter twice and the journal shows how the vote went.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

from pydantic import TypeAdapter

from ..errors import ConfigurationError, NoQuorumError
from ._members import (
    Escalate,
    Reply,
    Semantic,
    ask,
    canonical,
    check_escalate,
    labels,
    prompt_of,
    record,
    settle,
    to_json,
)

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["Ballot", "VoteResult", "vote"]

T = TypeVar("T")


@final
@dataclass(frozen=True, slots=True)
class Ballot:
    """One voter's ballot.

    Attributes:
        voter: the voter's label.
        answer: its answer (``None`` when it abstained).
        key: the answer's tally key (``None`` when it abstained).
        error: why it abstained (``"Type: message"``), else ``None``.
        model: the model that answered (agents).
    """

    voter: str
    answer: Any
    key: str | None
    error: str | None = None
    model: str | None = None


@final
@dataclass(frozen=True, slots=True)
class VoteResult(Generic[T]):
    """How a vote went.

    Attributes:
        winner: the answer that reached the quorum.
        votes: how many ballots it got.
        quorum: the votes it needed.
        tally: ``(answer, votes)`` for every answer given, most votes first (ties in
            ballot order).
        dissent: the voters that did not vote for the winner (another answer, or
            none), in voter order.
        ballots: every ballot, in voter order.
        calls: model turns and function steps spent on it.
        tokens: tokens spent on it.
    """

    winner: T
    votes: int
    quorum: int
    tally: tuple[tuple[T, int], ...]
    dissent: tuple[str, ...]
    ballots: tuple[Ballot, ...]
    calls: int
    tokens: int


def _quorum(quorum: int | None, n: int) -> int:
    if n == 0:
        raise ConfigurationError("vote() needs at least one voter")
    if quorum is None:
        return n // 2 + 1
    if isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1:
        raise ConfigurationError(f"vote(): quorum must be an int >= 1, not {quorum!r}")
    if quorum > n:
        raise ConfigurationError(f"vote(): a quorum of {quorum} cannot be reached by "
                                 f"{n} voter(s)")
    return quorum


def tally(ballots: Sequence[Ballot]) -> list[tuple[str, int, Any]]:
    """``(key, votes, first answer)`` per answer, most votes first, ties in ballot
    order."""
    counts: dict[str, list[Any]] = {}
    for b in ballots:
        if b.key is not None:
            counts.setdefault(b.key, [0, b.answer])[0] += 1
    ordered = sorted(enumerate(counts.items()), key=lambda kv: (-kv[1][1][0], kv[0]))
    return [(k, v[0], v[1]) for _, (k, v) in ordered]


def winner(counted: Sequence[tuple[str, int, Any]], quorum: int) -> tuple[str, int, Any] | None:
    """The top answer if it has the quorum and no tie; else ``None``."""
    if not counted or counted[0][1] < quorum:
        return None
    if len(counted) > 1 and counted[1][1] == counted[0][1]:
        return None
    return counted[0]


async def vote(ctx: Context, voters: Sequence[Any], task: Any, *,
               quorum: int | None = None, output_type: type[T] | None = None,
               key: Callable[[Any], Any] | None = None, escalate: Escalate = "error",
               breaker: bool = False) -> VoteResult[T]:
    """Ask every voter ``task`` and return the answer a quorum agrees on.

    Args:
        voters: agents or functions of the task (one may appear several times: each
            time is a voter of its own, ``name#i``).
        task: what each voter is asked (an agent gets it as text).
        quorum: the votes the winner needs (default: a majority, ``len(voters)//2+1``).
        output_type: each ballot is validated as this type (text read as JSON); one
            that does not fit is an abstention.
        key: the tally key of an answer (default: the answer itself, canonical JSON),
            e.g. ``str.lower`` to count "Paris" and "paris" as one answer.
        escalate: ``"error"`` raises :class:`~stalwart.errors.NoQuorumError` when no
            answer reaches the quorum; ``"dlq"`` dead-letters the run with the tally;
            ``"approval"`` asks a human, and approved returns the plurality answer.
        breaker: count each dissenting voter's answer against its model's circuit
            breaker (a semantic failure, like a 5xx).

    Raises:
        ConfigurationError: no voters, a quorum below 1 or above the voters, something
            that is not a voter, an unknown ``escalate`` (before anyone is asked).
        NoQuorumError: no answer reached the quorum, or two tied at the top.
    """
    names = labels(voters, "vote(): voters")
    need = _quorum(quorum, len(voters))
    check_escalate(escalate, "vote()")
    adapter = TypeAdapter(output_type) if output_type is not None else None
    prompt = prompt_of(task)
    replies: list[Reply] = await ctx.gather(*(
        ask(ctx, v, label, task, prompt, pattern="vote", output=adapter)
        for v, label in zip(voters, names, strict=True)))
    ballots = tuple(_ballot(r, key) for r in replies)
    counted = tally(ballots)
    top = winner(counted, need)
    win_key = top[0] if top is not None else None
    dissent = tuple(b.voter for b in ballots if b.key is None or b.key != win_key)
    semantic = [Semantic(b.voter, b.model,
                         b.error or f"voted {b.key} against the winner {win_key}")
                for b in ballots if b.voter in dissent and (win_key is not None or b.error)]
    await record(ctx, "vote:tally", {
        "quorum": need, "voters": len(voters), "winner": win_key,
        "tally": [[k, n] for k, n, _ in counted],
        "ballots": [{"voter": b.voter, "key": b.key, "model": b.model, "error": b.error}
                    for b in ballots]}, semantic, breaker=breaker)
    calls = sum(r.calls for r in replies)
    tokens = sum(r.tokens for r in replies)
    if top is None:
        err = NoQuorumError(
            f"vote: no answer reached the quorum of {need} among {len(voters)} voters "
            f"(tally: {', '.join(f'{k} x{n}' for k, n, _ in counted) or 'no valid ballot'})",
            quorum=need, voters=len(voters), tally=[[k, n] for k, n, _ in counted],
            abstained=[b.voter for b in ballots if b.key is None], run_id=ctx.run_id)
        await settle(ctx, escalate, err, {
            "quorum": need, "tally": err.tally, "abstained": err.abstained,
            "ballots": [{"voter": b.voter, "answer": to_json(b.answer), "error": b.error}
                        for b in ballots]})
        if not counted:  # approved, but there is nothing to return
            raise err
        top = counted[0]  # approved: the plurality, as a human accepted it
        dissent = tuple(b.voter for b in ballots if b.key != top[0])
    return VoteResult(winner=top[2], votes=top[1], quorum=need,
                      tally=tuple((a, n) for _, n, a in counted), dissent=dissent,
                      ballots=ballots, calls=calls, tokens=tokens)


def _ballot(r: Reply, key: Callable[[Any], Any] | None) -> Ballot:
    if not r.ok:
        return Ballot(r.member, None, None, r.error, r.model)
    k = canonical(key(r.value) if key is not None else r.value)
    return Ballot(r.member, r.value, k, None, r.model)
