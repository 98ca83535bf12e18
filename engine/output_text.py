"""OutputText: one sequence's output text as the output processor hands it out, O(the step's text) per step.

The text grows by a delta per step, may be cut where a stop string matched, and is handed out as deltas
(`take`). Nothing copies the whole text per step: the text not handed out yet is kept as parts, and of the
text handed out only its last `tail_len` characters (what stop strings and their hold-back look at: a stop
string is at most that long plus one), unless `keep` asks for all of it (`sent`: the cumulative text of
outputs that must be independent snapshots; the one O(length) copy per output they need).
"""
from __future__ import annotations


class OutputText:
    """A sequence's output text: `length` characters, the first `num_sent` of them handed out."""

    def __init__(self, tail_len: int = 0, keep: bool = True) -> None:
        self.tail_len = tail_len
        self.keep = keep
        self.length = 0
        self.num_sent = 0
        self.sent = ""                  # the text handed out, with `keep` (else "")
        self._sent_tail = ""            # its last `tail_len` characters
        self._unsent: list[str] = []    # the rest, a part per step

    def append(self, delta: str) -> None:
        """The step's new text."""
        if delta:
            self._unsent.append(delta)
            self.length += len(delta)

    def tail(self, n: int) -> str:
        """The text's last `n` characters (all of it where shorter); `n` at most `tail_len` plus what is not
        handed out yet. O(n)."""
        pieces, size = [], 0
        for part in reversed(self._unsent):
            if size >= n:
                break
            pieces.append(part[-(n - size):])
            size += len(pieces[-1])
        if size < n and self._sent_tail:
            pieces.append(self._sent_tail[-(n - size):])
        return "".join(reversed(pieces))

    def cut(self, length: int) -> None:
        """Drop the text past `length` (a stop string); text already handed out stays."""
        unsent = self._unsent_text()[:max(0, length - self.num_sent)]
        self._unsent = [unsent] if unsent else []
        self.length = self.num_sent + len(unsent)

    def take(self, num_chars: int) -> str:
        """Hand out the text up to `num_chars` (at least `num_sent`); returns what that adds."""
        unsent = self._unsent_text()
        delta, rest = unsent[:num_chars - self.num_sent], unsent[num_chars - self.num_sent:]
        self._unsent = [rest] if rest else []
        self.num_sent = num_chars
        if self.keep:
            self.sent += delta
        if self.tail_len:
            self._sent_tail = (self._sent_tail + delta)[-self.tail_len:]
        return delta

    def _unsent_text(self) -> str:
        return self._unsent[0] if len(self._unsent) == 1 else "".join(self._unsent)
