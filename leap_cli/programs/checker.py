"""A reply's checks (JSON, schema, semantics) in a process of their own, for ``generate-programs`` at high
concurrency.

At 32-64 requests in flight against a 50 ms server the stage's one event loop does 600-1300 replies a second,
and a reply's checks are ~20% of its CPU there. ``RemoteChecker`` sends the replies read in one pass of the
event loop to a child process (``reply.child``) as one frame, and gets each parsed program and its findings
back; the loop only frames and unpickles. The child runs ``reply.verify_reply``, the function the stage runs
in-process, so the findings are the same wherever they were made. Until the child says it is ready, and for
good once it has ended (it should not: then a warning is logged), the checks run in-process again, the
pending ones included: no reply goes unchecked. A child that leaves a check unanswered for ``STALL_S`` is
stopped first. The frames are described in ``reply``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import sys

from leap_cli.epic.classes import ClassVocab
from leap_cli.programs.reply import LEN, frame, verify_reply
from leap_cli.programs.schema import Finding
from leap_cli.programs.validate import Labels

log = logging.getLogger(__name__)
STALL_S = 60.0  # a check the child has not answered in this long: the child is stopped, the checks come back here


class _Protocol(asyncio.SubprocessProtocol):
    def __init__(self, owner: RemoteChecker):
        self.owner = owner
        self.buf = bytearray()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1:
            return
        buf = self.buf
        buf += data
        pos, n = 0, len(buf)
        while n - pos >= 4:
            (size,) = LEN.unpack_from(buf, pos)
            if n - pos - 4 < size:
                break
            self.owner._received(pickle.loads(memoryview(buf)[pos + 4:pos + 4 + size]))
            pos += 4 + size
        del buf[:pos]

    def process_exited(self) -> None:
        self.owner._exited.set()
        self.owner._ended()


class RemoteChecker:
    """``verify_reply`` in a child process; ``await check(text, labels)`` gives what ``verify_reply`` would."""

    def __init__(self, verbs: ClassVocab, nouns: ClassVocab, max_sub_actions: int):
        self.verbs, self.nouns, self.max_sub_actions = verbs, nouns, max_sub_actions
        self.transport: asyncio.SubprocessTransport | None = None
        self._stdin = None
        self.ended = False
        self._seq = 0
        self._pending: dict[int, tuple[asyncio.Future, str, Labels, float]] = {}  # seq: (future, text, labels, sent)
        self.remote = 0  # replies checked in the child
        self.local = 0  # and in this process (before the child was ready, after it ended)
        self._exited = asyncio.Event()
        self._ready = asyncio.Event()  # the child said it is ready (or it ended: start stops waiting)
        self._closing = False
        self._outbox: list[tuple] = []

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self.ended

    def local_check(self, text: str, labels: Labels) -> tuple[dict | None, list[Finding]]:
        self.local += 1
        return verify_reply(text, self.verbs, self.nouns, labels, self.max_sub_actions)

    async def start(self, wait: float = 10.0) -> None:
        """Start the child and wait up to ``wait`` seconds for it to report ready; checks run in-process until
        it has. A child that cannot start is logged and leaves every check in-process."""
        loop = asyncio.get_running_loop()
        # the child imports this very leap_cli: its folder goes first on the child's path unless the path has it
        # (installed: site-packages, which must not go before the standard library)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = (f"import sys; r = {root!r}; r in sys.path or sys.path.insert(0, r); "
                "from leap_cli.programs.reply import child; child()")
        try:
            self.transport, _ = await loop.subprocess_exec(
                lambda: _Protocol(self), sys.executable, "-c", code,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        except OSError as e:
            self.ended = True
            log.warning("program checks run in this process: the checker process did not start (%s)", e)
            return
        self._stdin = self.transport.get_pipe_transport(0)
        self._stdin.write(frame((self.verbs, self.nouns, self.max_sub_actions)))
        self._watch()
        try:
            await asyncio.wait_for(self._ready.wait(), wait)
        except asyncio.TimeoutError:
            pass

    async def check(self, text: str, labels: Labels) -> tuple[dict | None, list[Finding]]:
        if not self.ready:
            await asyncio.sleep(0)  # the loop goes round first: what is ready to read or send goes before this CPU work
            return self.local_check(text, labels)
        self._seq += 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[self._seq] = (fut, text, labels, asyncio.get_running_loop().time())
        if not self._outbox:  # the replies read in this pass of the event loop go to the child as one frame
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append((self._seq, text, labels.verb_class, labels.noun_class))
        return await fut

    def _watch(self) -> None:
        """Every ``STALL_S / 4`` seconds: a child that has left a check unanswered for ``STALL_S`` (stopped, stuck)
        is killed, and its pending checks run here (``_ended``), so that a stuck child cannot stall the stage."""
        if self.ended:
            return
        now = asyncio.get_running_loop().time()
        if self._pending and now - min(e[3] for e in self._pending.values()) > STALL_S:
            log.warning("the checker process answered no check in %.0f s: it is stopped and the checks go on in "
                        "this process", STALL_S)
            self.transport.kill()
            self._ended(warn=False)
            return
        asyncio.get_running_loop().call_later(STALL_S / 4, self._watch)

    def _flush(self) -> None:
        batch, self._outbox = self._outbox, []
        if batch and not self.ended:
            self._stdin.write(frame(batch))

    def _received(self, msg) -> None:
        if msg is None:
            self._ready.set()
            return
        for seq, program, findings in msg:
            entry = self._pending.pop(seq, None)
            if entry is None:  # checked here already (the child's end was seen before this reply was read)
                continue
            fut = entry[0]
            self.remote += 1
            if not fut.done():  # (cancelled: the stage is stopping)
                fut.set_result((program, findings))

    def _ended(self, warn: bool = True) -> None:
        if self.ended:
            return
        self.ended = True
        self._ready.set()
        if warn and (self._pending or not self._closing):
            code = self.transport.get_returncode() if self.transport else None
            log.warning("program checks continue in this process: the checker process ended (exit code %s)", code)
        pending, self._pending = self._pending, {}
        for fut, text, labels, _ in pending.values():
            if not fut.done():
                fut.set_result(self.local_check(text, labels))

    async def aclose(self) -> None:
        """Close the child's input (it exits) and wait for it; the checks still pending get their answers first."""
        if self.transport is None:
            return
        self._closing = True
        if self._pending:
            await asyncio.gather(*(e[0] for e in list(self._pending.values())), return_exceptions=True)
        self._stdin.close()
        try:
            await asyncio.wait_for(self._exited.wait(), 5.0)
        except asyncio.TimeoutError:
            self.transport.kill()
        self.transport.close()


